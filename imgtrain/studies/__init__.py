"""The studies: tools and data beside the core training loop, each writing run directories in the
DESIGN §2 layout or reading them.

    bow/           bag-of-visual-words baseline (jobs/bow.py)
    dcgan/         DCGAN, a training loop of its own (jobs/dcgan.py)
    features/      features of a named layer, t-SNE maps, SVM grids (jobs/extract.py, jobs/svm.py)
    reference/     the reference studies' reported numbers beside our runs (jobs/analyze.py --study)
    _cli.py        the command-line shape bow and dcgan share (parser with examples, error -> exit 2)

Nothing is imported here: `from imgtrain.studies import bow` loads only what bow needs.
"""
