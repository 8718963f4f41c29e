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
    if args.dry_run:
        problems = preflight(cfg)
        if problems:
            print("config check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
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
