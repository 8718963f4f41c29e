"""`python jobs/export.py`: export a run's weights as one plain fp32 checkpoint, e.g. consolidated from a ZeRO-partitioned
DeepSpeed checkpoint, so evaluation, feature extraction and fine-tuning load it like a DDP checkpoint."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="jobs/export.py", description=__doc__,
        epilog="examples:\n  python jobs/export.py runs/runs/ava_vit-1a2b3c4d            # best -> checkpoints/export-<tag>.pt\n"
               "  python jobs/export.py RUN_DIR --tag last --out /scratch/vit_last.pt\n"
               "then: python jobs/train.py --config ... model.pretrained_path=/scratch/vit_last.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run directory (<root>/runs/<run id>)")
    p.add_argument("--tag", default="best", help="best, last, or a DeepSpeed tag such as step000001200 (default best)")
    p.add_argument("--out", type=Path, help="output file (default RUN_DIR/checkpoints/export-<tag>.pt)")
    args = p.parse_args(argv)
    from imgtrain.engine.deepspeed_strategy import export_fp32  # torch, deepspeed: after --help
    if not (args.run_dir / "checkpoints").is_dir():
        print(f"export: {args.run_dir} is not a run directory (no checkpoints/)", file=sys.stderr)
        return 2
    try:
        out = export_fp32(args.run_dir, args.tag, args.out)
    except FileNotFoundError as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0

