#!/usr/bin/env python
"""Sweep submission at scale: a 1,000-cell grid (10 learning rates x 10 weight decays x 10 seeds of the tiny
digits MLP), timed end to end as a user runs it:

  1. `jobs/sweep.py GRID --dry-run`              expand, validate and type-check 1,000 cells, print the table
  2. `jobs/sweep.py GRID --no-preflight`         submit to the local SLURM cluster as ONE job array
  3. `jobs/sweep.py GRID`                        the same with the default preflight (each distinct data set,
                                                 model name, weights file checked from files: no torch/timm)
  4. `jobs/sweep.py cancel NAME`                 scancel the array right after each submission
  5. `jobs/sweep.py GRID` again                  resubmits the cancelled cells (preflight again)

The cluster is tests/cluster/slurm_local.sh (started here when it is not running, and stopped again at the
end in that case). The array is checked to be one job with 1,000 tasks (squeue -r).

    python benchmarks/sweep_scale.py [--cells-per-axis 10] [--keep]
The last line is `ratio: X.XX` = 10 s (the target) / the default submission's time (higher is better).
The analysis half (1,000 runs x 100 epochs of Parquet) is benchmarks/analysis_scale.py.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests/cluster/slurm_local.sh"
TARGET_S = 10.0


def cluster_env() -> dict:
    base = os.environ.get("IMGTRAIN_SLURM_DIR", "/tmp/imgtrain-slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_CONF=f"{base}/etc/slurm.conf", PATH=f"/usr/sbin:/sbin:{env.get('PATH', '/usr/bin:/bin')}",
               OMP_NUM_THREADS="1")
    return env


def sh(argv, env=None, check=True, timeout=600):
    t0 = time.perf_counter()
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    dt = time.perf_counter() - t0
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc, dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells-per-axis", type=int, default=10, help="grid side (cells = side^3; 10 -> 1,000)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--partition", default=os.environ.get("IMGTRAIN_SLURM_PARTITION", "debug"))
    args = p.parse_args()
    n = args.cells_per_axis
    py = sys.executable
    env = cluster_env()

    started = False
    if subprocess.run(["bash", SCRIPT, "status"], capture_output=True, env=env).returncode != 0:
        print("starting the local SLURM cluster (tests/cluster/slurm_local.sh start)", flush=True)
        proc, dt = sh(["bash", SCRIPT, "start"], env=env, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            sys.exit("cannot start the local SLURM cluster (needs root; see tests/cluster/README.md)")
        started = True
        print(f"  cluster up in {dt:.1f}s", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="sweep_scale_"))
    try:
        data = tmp / "digits16"
        sh([py, "-m", "shards", "pack", "digits", "-", data, "--upscale", "16"])
        grid = {"optim.lr": [round(1e-3 * (i + 1), 6) for i in range(n)],
                "optim.weight_decay": [round(i / 100, 4) for i in range(n)]}
        spec = {"name": "scale", "config": str(ROOT / "tests/configs/tiny_digits.yaml"),
                "overrides": {"data.path": str(data), "trainer.epochs": 1}, "grid": grid,
                "seeds": list(range(n)), "resources": {"time": 5}}
        path = tmp / "scale.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        cells = n ** 3
        sweep = [py, ROOT / "jobs/sweep.py"]
        results = {}

        proc, results["dry-run"] = sh([*sweep, path, "--dry-run", "--root", tmp / "dry"], env=env)
        rows = sum(1 for line in proc.stdout.splitlines()
                   if len(line.split()[0]) == 8 and all(ch in "0123456789abcdef" for ch in line.split()[0]))
        assert rows == cells, f"dry-run printed {rows} cells, expected {cells}"

        runs = (("submit, --no-preflight", ["--no-preflight"], "a"), ("submit (default: with preflight)", [], "b"),
                ("resubmit after cancel", [], "b"))
        for i, (label, extra, rdir) in enumerate(runs, 1):
            proc, dt = sh([*sweep, path, "--root", tmp / rdir, "--partition", args.partition,
                           "--array-parallelism", "2", *extra], env=env)
            results[label] = dt
            line = next(x for x in proc.stdout.splitlines() if "submitted" in x)
            job = line.split("job array ")[1].split()[0]
            q, _ = sh(["squeue", "-h", "-r", "-t", "all", "-j", job, "-o", "%i"], env=env)
            tasks = {t for t in q.stdout.split() if t.startswith(f"{job}_")}
            want = int(line.split("submitted ")[1].split()[0])  # the resubmission skips cells still completing
            assert len(tasks) == want and want > 0.99 * cells, f"array {job} has {len(tasks)} tasks, expected {want}"
            _, results[f"cancel {i} (jobs/sweep.py cancel)"] = sh([*sweep, "cancel", "scale", "--root", tmp / rdir],
                                                                   env=env)
            print(f"  {label}: one array, job {job}, {len(tasks)} tasks", flush=True)

        print(f"\n{cells:,} cells, local SLURM cluster ({args.partition}), {os.cpu_count()} CPUs")
        print(f"{'step':50s} {'seconds':>8s}")
        for k, v in results.items():
            print(f"{k:50s} {v:8.2f}")
        default = results["submit (default: with preflight)"]
        bare = results["submit, --no-preflight"]
        print(f"target: first submission < {TARGET_S:.0f} s -> {'met' if default < TARGET_S else 'NOT met'} "
              f"({default:.2f} s with the preflight, {bare:.2f} s without it); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"ratio: {TARGET_S / default:.2f}")
        return 0
    finally:
        if not args.keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
        if started:
            subprocess.run(["bash", SCRIPT, "stop", "--purge"], capture_output=True, env=env)


if __name__ == "__main__":
    sys.exit(main())
