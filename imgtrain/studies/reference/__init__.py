"""The reference studies' reported numbers (jobs/studies/S000.yaml ... S004.yaml) and our runs beside them.

    study = load_study("S004")                 # validated; StudyError names file:line on a bad file
    cmp = compare(study, root)                 # rows: study value, ours, difference, run id
    files = write_comparison(cmp, out_dir)     # <out>/S004.csv + one PNG per experiment group

A study file (YAML):

    study: S004                                # = the file name's stem
    title: ...
    source: 004_4f16f69e87ac1b68.txt           # the original document's file name
    notes: ...                                 # optional
    recipes:                                   # every recipe of the study, in one place
      mlp: {grid: jobs/grids/s004_mlp.yaml}    # runs of the sweep named in the grid file (`name:`)
      cnn_base: {config: jobs/configs/s004_cnn_base.yaml}   # runs whose config `name:` is the file's
      bow: {name: s001_bow, command: "python jobs/bow.py ..."}   # runs named so by another tool
      x: {config: ..., cell: {data.path: ...}} # a recipe may also fix config values the run must have
    experiments:
      - id: mlp_sgd_relu_1                     # short, stable, unique in the file
        group: mlp                             # optional: one plot per group (default: the id)
        description: ...
        recipe: mlp                            # optional (no recipe: listed, never matched)
        cell: {optim.name: sgd, model.depth: 1}   # config values a run must have (grid cell)
        where: "1.1.4 Resultados"             # optional default for its numbers
        notes: ...                             # optional
        numbers:
          - metric: acc1                       # OUR metric name (acc1, acc5, loss, epoch_loss, mse, mae, time, ...)
            study_metric: val_accuracy         # optional: the name the study prints
            split: val                         # the split as the study names it
            our_split: test                    # train | val | test | run (time, epochs) | null (not comparable)
            printed: "0,5414"                  # exactly as printed (decimal comma kept)
            value: 0.5414                      # the parsed number, in the printed unit
            unit: "%"                          # optional: fraction (default), %, /100, count, s, min, h, d, not stated
            at: final                          # optional: final (default) | best (the run's best epoch) | N (1-based)
            where: "Table 1"                   # optional (else the experiment's)
            notes: "text says 0.46"            # optional

Runs are the analysis module's (imgtrain.analysis.load_runs: config, summary, Parquet metric rows). A run
matches an experiment when it comes from the experiment's recipe (grid: the run's sweep is the grid's
name; config: the run config's `name:` is the recipe config's; name: either) and has every value of the
recipe's and the experiment's `cell`. Several matching runs: a DONE one, the most recently changed.
Our value: the metric on the logged split whose data is `our_split` (a run with data.val_split=test
logs the test data per epoch under "val"; the "test" rows are one evaluation of best.pt), at the epoch
the study reports (`at`). Percentages are compared as fractions, times in the study's unit.

Modules (the names below are their public API):
    study.py        the study file: its dataclasses (Study, Experiment, Recipe, Number), loading and validation
    matching.py     our runs (and jobs/evaluate.py evaluations) of an experiment, and our value of a number
    comparison.py   the comparison rows, and their CSV, plots and Markdown table
"""
from imgtrain.studies.reference.study import (OUR_SPLITS, REPO, STUDIES_DIR, UNITS, Experiment, Number, Recipe, Study,
                                              StudyError, _cell_text, known_ids, load_all, load_study, parse_study,
                                              study_path)
from imgtrain.studies.reference.matching import (EVALUATIONS, Evaluation, evaluation_value, evaluations_of,
                                                 load_evaluations, our_value, runs_of)
from imgtrain.studies.reference.comparison import (COLUMNS, Comparison, compare, plot_group, table_text,
                                                   write_comparison, write_csv)

__all__ = ["OUR_SPLITS", "REPO", "STUDIES_DIR", "UNITS", "Experiment", "Number", "Recipe", "Study", "StudyError",
           "known_ids", "load_all", "load_study", "parse_study", "study_path", "EVALUATIONS", "Evaluation",
           "evaluation_value", "evaluations_of", "load_evaluations", "our_value", "runs_of", "COLUMNS", "Comparison",
           "compare", "plot_group", "table_text", "write_comparison", "write_csv"]
