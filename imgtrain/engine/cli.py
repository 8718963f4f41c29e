"""The command line of one training run (`python jobs/train.py --help`) and its start-up check.

`preflight` finds in seconds what would stop a run at start-up (--dry-run, launchers, sweeps); `main`
parses the arguments, loads the config and hands it to trainer.train (imported only when training).
This module imports no torch: `--help` and a config error answer at once; the data set and model
registry (torch, timm) are imported by `preflight` itself, the trainer only to train.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from imgtrain import config as C
from imgtrain import runs
from imgtrain.runs import REQUEUE_EXIT_CODE


def split_and_monitor_problems(cfg: C.Config, info) -> list[str]:
    """A validation split the manifest lacks (validation would silently be off) and a trainer.monitor that no
    split logs (no best.pt, early stopping never fires). `info`: data.dataset_info(cfg)."""
    import numpy as np
    from imgtrain import tasks
    problems = []
    splits = sorted(info.manifest["splits"])
    val = cfg.data.val_split
    # the default 'val' on a data set without one means "no validation", as it always did; a named one must exist
    if val and val not in splits and val != C.DataConfig.val_split:
        problems.append(f"data.val_split: {info.root}/manifest.json has no split '{val}' (it has: "
                        f"{', '.join(splits)}; data.val_split=null for no validation)")
        return problems
    has_val = bool(val) and val in splits
    try:
        monitor = runs.monitor_of(cfg, has_val=has_val).metric
    except ValueError as e:
        return [f"trainer.monitor_mode: {e}"]
    if cfg.trainer.monitor in (None, "auto"):
        return problems
    logged = [runs.NO_VAL_MONITOR]
    if has_val:
        try:  # the names task.metrics returns, from a few made-up predictions
            task = tasks.build(cfg.task, info.num_outputs, info.class_counts, info.class_names, cfg.model.num_classes)
            c = cfg.model.num_classes or task.num_outputs
            logits = np.random.default_rng(0).normal(size=(2 * c, c))
            targets = np.arange(2 * c) % c if task.name == "classification" else np.ones((2 * c, c))
            logged += [f"val/{k}" for k in (*task.metrics(logits, targets), "samples", "skipped")]
        except Exception:  # cannot tell: the trainer's own check decides
            return problems
    if monitor not in logged:
        shown = [m for m in logged if "/" not in m.split("/", 1)[1]]
        problems.append(f"trainer.monitor: no metric '{monitor}' is logged for model selection (it can be one of: "
                        f"{', '.join(shown)}{', val/acc_class/<i>' if any('acc_class/' in m for m in logged) else ''}"
                        f"{'' if has_val else '; no validation split, so no val/ metric'})")
    return problems


def preflight(cfg: C.Config) -> list[str]:
    """What would stop this run at start-up, found in seconds (for --dry-run and launchers)."""
    from imgtrain import models  # torch, timm: only for the check itself (not for --help)
    from imgtrain.data import dataset_info
    problems = []
    try:
        info = dataset_info(cfg)
        for key in ("train_split", "val_split", "test_split"):
            split = getattr(cfg.data, key)
            if split and split not in info.manifest["splits"] and key == "train_split":
                problems.append(f"data.{key}: {info.root}/manifest.json has no split '{split}'")
        problems += split_and_monitor_problems(cfg, info)
    except Exception as e:
        problems.append(f"data.path: {e}")
    try:
        models.registry.check_name(cfg.model.name)
    except C.ConfigError as e:
        problems.append(str(e))
    if cfg.dist.strategy == "deepspeed":
        from imgtrain.engine.deepspeed_strategy import ds_config
        try:
            ds_config(cfg, world=1)
        except C.ConfigError as e:
            problems.append(str(e))
    if cfg.model.pretrained_path and not Path(cfg.model.pretrained_path).is_file():
        problems.append(f"model.pretrained_path: {cfg.model.pretrained_path} is not a file (weights come only from "
                        "a local file; nothing is downloaded)")
    return problems


def console_main() -> int:
    """The `imgtrain-train` console script: `main()` with the early signal recorder of jobs/train.py. Launchers
    run jobs/train.py, whose recorder is in place before this module's imports (about a second) run."""
    from imgtrain.engine.signals import catch_early
    catch_early()
    return main()


def main(argv=None, hooks=None) -> int:
    """`python jobs/train.py --config FILE [key=value ...] [--dry-run]`. `hooks` (hooks.Hooks): the tests' seams
    (tests/hooked_train.py)."""
    import argparse
    p = argparse.ArgumentParser(
        prog="jobs/train.py",
        description="Train and evaluate one run. Under torchrun (--nproc_per_node N, one node or several) the same "
                    "command trains with DDP. A run directory that already holds last.pt resumes automatically.",
        epilog="examples:\n  python jobs/train.py --config jobs/configs/digits.yaml data.path=demo/shards/digits\n"
               "  torchrun --nproc_per_node 2 jobs/train.py --config jobs/configs/digits.yaml optim.lr=3e-3\n"
               "  python jobs/train.py --config jobs/configs/digits.yaml --dry-run\n\n"
               f"exit status: 0 done, 1 failed, 2 bad config, {REQUEUE_EXIT_CODE} stopped by SIGUSR1/SIGTERM after "
               "writing last.pt (requeue me)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (may `extends:` another)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, YAML-typed (optim.lr=3e-4)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate (keys, types, data set, model name, weights file), print the resolved config "
                        "and run id, and exit")
    args = p.parse_args(argv)
    try:
        cfg = C.load(args.config, args.overrides)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # the same check with or without --dry-run, on every rank (seconds), before the run directory exists: an
    # unknown model or a missing data set is exit 2 with its lines, not a traceback and a FAILED run folder
    problems = preflight(cfg)
    if problems:
        print("config check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    if args.dry_run:
        print(C.to_yaml(cfg), end="")
        print(f"# run id: {runs.run_id(cfg)}  config hash: {C.config_hash(cfg)}  "
              f"run dir: {runs.run_dir(cfg)}")
        return 0
    from imgtrain.engine.checkpoint import RunError
    from imgtrain.engine.trainer import train
    try:
        return train(cfg, hooks).exit_code
    except (RunError, runs.Locked) as e:
        # a reason stated in full: one line (or a few) on stderr; the FAILED file keeps the traceback
        rank = os.environ.get("RANK")
        where = f" (rank {rank})" if rank not in (None, "0") else ""
        print(f"[imgtrain] error{where}: {e}", file=sys.stderr, flush=True)
        return 1
