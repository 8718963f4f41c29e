#!/usr/bin/env python
"""ASHA against synchronous successive halving and the full grid, on recorded learning curves.

The curves: the 16-cell digits MLP grid of jobs/grids/digits_mlp_asha.yaml (optim.name x optim.lr x
model.activation x model.depth), every cell trained once to the last rung on the bundled digits (`--record`,
about two minutes on 2 cores; otherwise the recorded benchmarks/results/asha_curves.json), keeping each
epoch's val/acc1 and wall time.

The replay: W workers (4) on simulated time. A job's duration is the sum of its epochs' recorded times,
times a per-cell slowdown (seeded log-normal, sigma 0.5: the same cell on a slower or busier node) plus a
start-up cost per job (`--startup-s`: scheduling, process start, loading last.pt). Three schedules:
- ASHA: imgtrain's own rules (imgtrain/sweep/asha_rules.py next_job/record_result), each free worker asks
  for a job as soon as it is free;
- synchronous successive halving (halving.py's rule, keep = 1/eta of each rung, ceil): every cell of a
  rung is trained (list-scheduled on the W workers) before any is promoted;
- the full grid: every cell to the last rung.
Figures: wall time until the schedule's best final result is recorded (the time to the answer), total
epochs trained, the best final val/acc1 found. The last line is `ratio: X.XX` = synchronous halving's time
to its best result / ASHA's (higher: ASHA answers sooner).

    python benchmarks/asha.py [--record] [--workers 4] [--rungs 1 3 9] [--eta 3] [--seeds 5]
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "benchmarks/results/asha_curves.json"
GRID = {"optim.name": ["sgd", "adam"], "optim.lr": [0.001, 0.01], "model.activation": ["relu", "tanh"],
        "model.depth": [1, 2]}


def record(epochs: int, out: Path) -> dict:
    """Train every cell of the grid to `epochs` (debug executor, one after the other) and keep its curve."""
    import pyarrow.compute as pc
    import yaml
    from imgtrain.logs import read_metrics
    from imgtrain.sweep.spec import load_spec
    tmp = Path(tempfile.mkdtemp(prefix="imgtrain-asha-bench-"))
    try:
        data = tmp / "digits"
        subprocess.run([sys.executable, "-m", "shards", "pack", "digits", "-", str(data), "--upscale", "32"],
                       check=True, cwd=ROOT, capture_output=True)
        spec = tmp / "grid.yaml"
        spec.write_text(yaml.safe_dump({
            "name": "asha_bench", "config": str(ROOT / "jobs/configs/cifar10_mlp.yaml"),
            "overrides": {"data.path": str(data), "data.batch_size": 64, "data.num_workers": 0, "data.hflip": 0.0,
                          "trainer.epochs": epochs, "trainer.log_every_seconds": 30},
            "grid": GRID}))
        t0 = time.time()
        subprocess.run([sys.executable, "jobs/sweep.py", str(spec), "--executor", "debug", "--root", str(tmp / "root")],
                       check=True, cwd=ROOT, capture_output=True)
        sweep = load_spec(spec, root=str(tmp / "root"))
        t = read_metrics(tmp / "root", run_id=[c.run_id for c in sweep.cells])
        curves = {}
        for c in sweep.cells:
            mine = t.filter(pc.equal(t["run_id"], c.run_id)).to_pylist()
            acc = {r["epoch"]: r["value"] for r in mine if r["split"] == "val" and r["metric"] == "acc1"}
            ends = {r["epoch"]: r["time"].timestamp() for r in mine if r["split"] == "train" and r["metric"] == "epoch_loss"}
            durations = [ends[e] - ends[e - 1] for e in range(1, epochs)]
            first = durations[0] if durations else 1.0
            curves[c.id] = {"values": c.values, "acc1": [acc[e] for e in range(epochs)],
                            "epoch_s": [round(first, 4), *(round(d, 4) for d in durations)]}
        result = {"epochs": epochs, "recorded": time.strftime("%Y-%m-%d"), "train_s": round(time.time() - t0, 1),
                  "grid": GRID, "cells": curves}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def job_seconds(curve: dict, slow: float, start: int, end: int, startup: float) -> float:
    return startup + slow * sum(curve["epoch_s"][start:end])


def run_asha(cells: dict, slow: dict, rungs: list[int], eta: float, workers: int, startup: float) -> dict:
    from imgtrain.sweep import asha_rules as R
    ledger = R.new_ledger("bench", rungs, eta, "val/acc1", "max", sorted(cells))
    clock, events, epochs, best, best_t = 0.0, [], 0, -math.inf, 0.0
    free = [f"w{i}" for i in range(workers)]
    while True:
        while free:
            w = free.pop()
            job = R.next_job(ledger, w)
            if job is None:
                break
            cid, k = job
            start = rungs[k - 1] if k else 0
            heapq.heappush(events, (clock + job_seconds(cells[cid], slow[cid], start, rungs[k], startup), w, cid, k))
            epochs += rungs[k] - start
        if not events:
            break
        clock, w, cid, k = heapq.heappop(events)
        value = cells[cid]["acc1"][rungs[k] - 1]
        last = k == len(rungs) - 1
        R.record_result(ledger, cid, k, value, finished=last, worker=w)
        if last and value > best:
            best, best_t = value, clock
        free.append(w)
    return {"time_to_best": best_t, "makespan": clock, "epochs": epochs, "best": best}


def list_schedule(jobs: list[tuple[float, str]], workers: int, clock: float) -> tuple[dict[str, float], float]:
    """Jobs in order on the first free worker; returns each job's end time and the last end."""
    free = [clock] * workers
    ends = {}
    for seconds, cid in jobs:
        t = heapq.heappop(free)
        ends[cid] = t + seconds
        heapq.heappush(free, t + seconds)
    return ends, max(free)


def run_sync(cells: dict, slow: dict, rungs: list[int], eta: float, workers: int, startup: float) -> dict:
    alive, clock, epochs, start = sorted(cells), 0.0, 0, 0
    best, best_t = -math.inf, 0.0
    for k, rung in enumerate(rungs):
        ends, clock = list_schedule([(job_seconds(cells[c], slow[c], start, rung, startup), c) for c in alive],
                                    workers, clock)
        epochs += (rung - start) * len(alive)
        if k == len(rungs) - 1:
            for c in alive:
                v = cells[c]["acc1"][rung - 1]
                if v > best or (v == best and ends[c] < best_t):
                    best, best_t = v, ends[c]
            break
        alive = sorted(alive, key=lambda c: -cells[c]["acc1"][rung - 1])[:max(1, math.ceil(len(alive) / eta - 1e-9))]
        start = rung
    return {"time_to_best": best_t, "makespan": clock, "epochs": epochs, "best": best}


def run_full(cells: dict, slow: dict, rungs: list[int], workers: int, startup: float) -> dict:
    final = rungs[-1]
    ends, clock = list_schedule([(job_seconds(cells[c], slow[c], 0, final, startup), c) for c in sorted(cells)],
                                workers, 0.0)
    best = max(cells, key=lambda c: (cells[c]["acc1"][final - 1], -ends[c]))
    return {"time_to_best": ends[best], "makespan": clock, "epochs": final * len(cells),
            "best": cells[best]["acc1"][final - 1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--record", action="store_true", help="train the grid again and rewrite the recorded curves")
    p.add_argument("--curves", type=Path, default=CURVES)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rungs", type=int, nargs="+", default=[1, 3, 9])
    p.add_argument("--eta", type=float, default=3.0)
    p.add_argument("--seeds", type=int, default=5, help="slowdown draws to average over")
    p.add_argument("--sigma", type=float, default=0.5, help="log-normal sigma of the per-cell slowdown")
    p.add_argument("--startup-s", type=float, default=2.0, help="simulated start-up cost of each job")
    args = p.parse_args(argv)
    if args.record or not args.curves.is_file():
        print(f"recording the curves ({len(GRID)} axes, {args.rungs[-1]} epochs per cell) ...", flush=True)
        data = record(args.rungs[-1], args.curves)
    else:
        data = json.loads(args.curves.read_text())
    if data["epochs"] < args.rungs[-1]:
        raise SystemExit(f"{args.curves} holds {data['epochs']} epochs per cell; the last rung is {args.rungs[-1]} "
                         "(run with --record)")
    cells = data["cells"]
    print(f"curves: {len(cells)} cells x {data['epochs']} epochs of the digits MLP grid (recorded {data['recorded']}, "
          f"{data['train_s']} s to train); {args.workers} workers, rungs {args.rungs}, eta {args.eta:g}, "
          f"slowdown log-normal sigma {args.sigma}, {args.startup_s} s start-up per job, {args.seeds} draws")
    totals: dict[str, dict[str, float]] = {}
    for seed in range(args.seeds):
        rng = random.Random(seed)
        slow = {c: math.exp(rng.gauss(0.0, args.sigma)) for c in sorted(cells)}
        runs = {"ASHA": run_asha(cells, slow, args.rungs, args.eta, args.workers, args.startup_s),
                "sync halving": run_sync(cells, slow, args.rungs, args.eta, args.workers, args.startup_s),
                "full grid": run_full(cells, slow, args.rungs, args.workers, args.startup_s)}
        for name, r in runs.items():
            acc = totals.setdefault(name, {k: 0.0 for k in r})
            for k, v in r.items():
                acc[k] += v / args.seeds
    print(f"{'schedule':<14} {'time to best (s)':>17} {'makespan (s)':>13} {'epochs':>7} {'best val/acc1':>14}")
    for name, r in totals.items():
        print(f"{name:<14} {r['time_to_best']:>17.1f} {r['makespan']:>13.1f} {r['epochs']:>7.1f} {r['best']:>14.4f}")
    ratio = totals["sync halving"]["time_to_best"] / totals["ASHA"]["time_to_best"]
    print(f"ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
