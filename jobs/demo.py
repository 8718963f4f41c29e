#!/usr/bin/env python
"""The embedded demo (`make demo`): pack scikit-learn's digits into shards, train a small ConvMixer with
2 DDP processes on CPU, evaluate on test, and plot the learning curve. No download, no SLURM."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo", help="demo directory (shards and runs), relative to the repository")
    p.add_argument("--nproc", type=int, default=2, help="DDP processes (torchrun --nproc_per_node)")
    p.add_argument("--fresh", action="store_true", help="delete the demo directory first and start over")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for the training run")
    args = p.parse_args()
    out = (ROOT / args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    shards_dir = out / "shards" / "digits"
    t0 = time.time()

    print("== 1/3 pack the bundled digits into WebDataset shards", flush=True)
    run([sys.executable, "-m", "shards", "pack", "digits", "-", shards_dir, "--upscale", "32"])

    print(f"== 2/3 train jobs/configs/digits.yaml with {args.nproc} DDP processes (torchrun, gloo, CPU)", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
         "jobs/train.py", "--config", "jobs/configs/digits.yaml", f"data.path={shards_dir}",
         f"output.root={out}", *args.overrides], env=env)

    print("== 3/3 results", flush=True)
    from imgtrain import config as C
    from imgtrain.analysis import plot_learning_curves
    from imgtrain import runs
    from imgtrain.logs import read_metrics

    cfg = C.load(ROOT / "jobs/configs/digits.yaml", [f"data.path={shards_dir}", f"output.root={out}", *args.overrides])
    run_dir = runs.run_dir(cfg)
    table = read_metrics(run_dir)
    png = plot_learning_curves(table, runs.run_id(cfg), run_dir / "learning_curve.png")
    test = json.loads((run_dir / "test_results.json").read_text())["metrics"]
    print(f"run directory   {run_dir}")
    print(f"parquet metrics {run_dir / 'metrics'} ({table.num_rows} rows)")
    print(f"learning curve  {png}")
    print(f"test accuracy   {100 * test['acc1']:.2f}% on {int(test['samples'])} held-out digits "
          f"(macro F1 {test['f1']:.4f})")
    print(f"demo finished in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
