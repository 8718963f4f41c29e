"""Evaluation and error analysis of a trained model (a run directory) or a pretrained one (config + weights).

    src = resolve_source(run_dir="runs/runs/tiny-1a2b3c4d", data="shards/clipart")  # or config=..., overrides=...
    env = dist.init(src.cfg)                                 # torchrun: every rank evaluates its part
    loaded = load_model(src, env.device)
    result = evaluate_split(loaded, "test", env)             # each sample once, gathered in index order
    files = write_outputs(result, "out/")                    # rank 0: metrics.json, confusion_matrix.png,
                                                             # predictions.parquet, per_class.csv

Which weights: a run's `checkpoints/{best,last}.pt` (its EMA weights when the run kept an EMA, as the
trainer's own test does) or any file: an imgtrain checkpoint or export, or a timm/torchvision weights file.
The model is rebuilt from the run's `config.yaml`; its input normalisation is the one it was trained with
(the training data set's statistics, or the pretrained model's), also when `--data` points at a new domain.

Labels and outputs: the model's outputs are matched to the evaluated data set's classes by index. When
the counts differ (an ImageNet head on a clip-art set), a class map says which output each class is
(`names`: by the run's class names; `imagenet`: by ImageNet wnid or name; a JSON file); metrics are then
over the data set's classes (the mapped outputs' logits), plus `full/acc1`, `full/acc5`, `full/loss` over
all of the model's outputs. Without a map, a count mismatch is an error: a re-initialised head would
only measure chance.

A problem the user can fix raises EvalError with a one-line message (the CLIs exit 2 with it).

Modules, each importing only those above it: load.py (Source, LoadedModel, EvalError), classmap.py
(--class-map), metrics.py (evaluate_split, EvalResult, metrics and tables), plots.py (figures),
outputs.py (the files and the printed summary), cli.py (helpers of the jobs/ commands).
"""
from imgtrain.evaluation.load import (CHECKPOINT_TAGS, CLASS_MAP_KINDS, EvalError, LoadedModel, Source,
                                      load_model, resolve_source)
from imgtrain.evaluation.classmap import resolve_class_map
from imgtrain.evaluation.metrics import (EvalResult, compute_metrics, confusion, evaluate_split, per_class,
                                         predictions_table, sample_keys)
from imgtrain.evaluation.plots import plot_confusion, plot_scores, save_figure
from imgtrain.evaluation.outputs import default_out, most_confused, summary_lines, write_csv, write_outputs
from imgtrain.evaluation.cli import log_notes, split_positionals

__all__ = ["CHECKPOINT_TAGS", "CLASS_MAP_KINDS", "EvalError", "LoadedModel", "Source", "load_model", "resolve_source",
           "resolve_class_map", "EvalResult", "compute_metrics", "confusion", "evaluate_split", "per_class",
           "predictions_table", "sample_keys", "plot_confusion", "plot_scores", "save_figure",
           "default_out", "most_confused", "summary_lines", "write_csv", "write_outputs", "log_notes",
           "split_positionals"]
