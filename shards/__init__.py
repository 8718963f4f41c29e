"""Pack image data sets into verified WebDataset shards (see DESIGN.md §1).

Command line: ``python -m shards pack|verify|info ...``; the manifest reader the
training code uses is :func:`shards.manifest.load_manifest`.
"""

__version__ = "0.1.0"
