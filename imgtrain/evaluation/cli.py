"""Evaluate a trained run (or a pretrained model) on a split: every metric of the task, the confusion
matrix, per-class top-1/top-5, cross-entropy, precision, recall and F1, and one Parquet row per image
for error analysis.

examples:
  python jobs/evaluate.py runs/runs/digits-a0c02405                      # its test split, best.pt
  python jobs/evaluate.py runs/runs/digits-a0c02405 --data shards/other --split test --checkpoint last
  torchrun --nproc_per_node 4 jobs/evaluate.py runs/runs/clipart_vgg19-1a2b3c4d --data shards/sketch
  python jobs/evaluate.py --config jobs/configs/clipart_vgg19.yaml \\
      model.pretrained_path=/weights/vgg19.tv_in1k.safetensors data.path=shards/clipart \
      --class-map clipart_to_imagenet.json      # {"dog": "golden retriever", "axe": 8, ...}

The model is rebuilt from RUN_DIR/config.yaml and keeps the input normalisation it was trained with,
also on another data set (--data). With --config, the weights come from --checkpoint FILE or
model.pretrained_path, and the model keeps the classifier of those weights (e.g. ImageNet's 1000 classes).
When the model's outputs and the data set's classes differ in number, --class-map says which output each
class is (names: the run's class names; imagenet: ImageNet-1k wnids or names; FILE.json: a list of output
indices, or {"class": index or output name}); metrics are then over the data set's classes, plus
full/acc1, full/acc5 and full/loss over all outputs. Without a map that is an error: a new, untrained
head would only measure chance.

Writes to --out (default RUN_DIR/eval/<data set>-<split>-<checkpoint>): metrics.json (metrics, per-class
table, confusion matrix, what was loaded), confusion_matrix.png, per_class.csv, predictions.parquet
(key, index, label, pred, correct, prob, loss, top5 classes/names/probabilities; for score distributions
the true and predicted mean score and distributions). Under torchrun each process evaluates its part
of the split (each image once) and rank 0 writes.
Exit status: 0 done, 1 failed, 2 bad arguments (unknown run, data set, checkpoint or class map).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from imgtrain.evaluation.load import EvalError, LoadedModel

# the model code (torch, timm) is imported in main(), after the arguments are parsed: --help answers at once


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                usage="%(prog)s (RUN_DIR | --config FILE) [key=value ...] [options]",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="RUN_DIR | key=value",
                   help="a run directory (<root>/runs/<run id>), then config overrides")
    p.add_argument("--config", metavar="FILE", help="evaluate the model of this config (no run directory)")
    p.add_argument("--data", metavar="DIR", help="another shard data set to evaluate on (replaces data.path)")
    p.add_argument("--split", help="split to evaluate (default: the config's data.test_split, test)")
    p.add_argument("--checkpoint", metavar="best|last|PATH",
                   help="run checkpoint (default best; last.pt when the run has no best.pt) or a weights file")
    p.add_argument("--class-map", metavar="names|imagenet|FILE", help="data set class -> model output")
    p.add_argument("--batch-size", type=int, metavar="N", help="per-process batch (default data.eval_batch_size)")
    p.add_argument("--workers", type=int, metavar="N", help="data loader workers (default data.num_workers)")
    p.add_argument("--out", metavar="DIR", help="output directory")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from imgtrain import evaluation as E
    from imgtrain.engine import dist
    try:
        run_dir, overrides = E.split_positionals(args.args, args.config)
        src = E.resolve_source(run_dir, args.config, overrides, data=args.data, checkpoint=args.checkpoint,
                               batch_size=args.batch_size, workers=args.workers)
    except E.EvalError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    env = dist.init(src.cfg)
    try:
        loaded = E.resolve_class_map(E.load_model(src, env.device), args.class_map)
        split = args.split or src.cfg.data.test_split or "test"
        if env.is_main:
            print(f"[evaluate] {loaded.describe()}\n[evaluate] data {loaded.info.root} split {split}", flush=True)
            E.log_notes(loaded, "evaluate.py")
        result = E.evaluate_split(loaded, split, env)
        if env.is_main:
            files = E.write_outputs(result, args.out or E.default_out(loaded, split))
            print("\n".join(E.summary_lines(result, files)), flush=True)
        dist.barrier(env)
    except E.EvalError as e:
        if env.is_main:
            print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.close(env)
    return 0


# ---------------------------------------------------------------- shared by jobs/extract.py and jobs/svm.py

def split_positionals(items: Sequence[str], config: Optional[str]) -> tuple[Optional[str], list[str]]:
    """`RUN_DIR [key=value ...]` or, with --config, `[key=value ...]`: (run dir, overrides)."""
    items = list(items)
    if config is None:
        if not items or "=" in items[0]:
            raise EvalError("give a RUN_DIR (a directory <root>/runs/<run id>) or --config FILE")
        run_dir, items = items[0], items[1:]
    else:
        run_dir = None
    bad = [i for i in items if "=" not in i]
    if bad:
        raise EvalError(f"unexpected argument '{bad[0]}' (overrides are key=value"
                        f"{'; a RUN_DIR does not go with --config' if config else ''})")
    return run_dir, items


def log_notes(loaded: LoadedModel, prog: str) -> None:
    for note in loaded.notes:
        print(f"{prog}: note: {note}", file=sys.stderr, flush=True)
