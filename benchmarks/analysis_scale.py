#!/usr/bin/env python
"""Analysis at scale: time `jobs/analyze.py`'s work (read every run's Parquet metrics and summary,
rank them into a leaderboard, write CSV/Markdown/report) over a synthetic sweep of 1,000 runs x 100
epochs, without per-run plots.

Each synthetic run is left as the engine leaves it, written with the engine's own writers
(MetricWriter, write_summary, markers, compact_metrics): per epoch 5 train log steps (loss, lr,
img_per_s), train epoch_loss/skipped, and 16 val metrics (loss, acc1, acc5, precision, recall, f1,
acc_class/0..9); a test row set at the end; one part file per `--epochs-per-part` epochs (the engine
flushes one at every checkpoint, i.e. every epoch; the writer merges its files every 16 parts). 3% of
the cells are left INCOMPLETE (half-way, no summary) with their files, 2% FAILED, 5% PRUNED and the
rest DONE, and those are compacted into one file per run as the trainer (at DONE), logs.record_failure
(at FAILED) and the successive halving (at PRUNED) do (`--no-compact`: every part kept, as before
compaction existed).

Timed: cold (first analysis: every run read through read_metrics, the cache under OUT/.cache
written; the best of `--repeats`, each with the cache removed first), warm (analysed again, nothing
changed), incremental (50 runs gained a resumed attempt's part since), the CLI as a whole process,
and the default figures.

    python benchmarks/analysis_scale.py [--runs 1000] [--epochs 100] [--epochs-per-part 1] [--repeats 3]
The last line is `ratio: X.XX` = 2 s target / cold time (higher is better; >= 1 meets the target).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from imgtrain import config as C  # noqa: E402
from imgtrain.logs import MetricWriter, compact_metrics, mark_done, mark_failed, write_summary  # noqa: E402
from imgtrain.logs.metric_writer import ROLL_PARTS  # noqa: E402

TARGET_S = 2.0
GRID = {
    "optim.name": ["sgd", "adam", "adamw", "rmsprop", "lamb"],
    "model.activation": ["relu", "gelu", "tanh", "sigmoid"],
    "model.depth": [1, 2, 3, 4, 5],
    "optim.lr": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1],
}
CLASSES = 10
STEPS_PER_EPOCH, LOG_EVERY = 50, 10


def grid_cells(n: int) -> list[dict]:
    """The first `n` cells of GRID (cycled with new seeds when n exceeds the grid)."""
    keys = list(GRID)
    combos = list(itertools.product(*GRID.values()))
    return [dict(zip(keys, combos[i % len(combos)]), **{"trainer.seed": i // len(combos)}) for i in range(n)]


def _curve(rng: np.random.Generator, cell: dict, epochs: int) -> np.ndarray:
    """A plausible val acc1 curve: saturating, cell-dependent ceiling, a little noise."""
    quality = {"sgd": 0.0, "adam": 0.04, "adamw": 0.05, "rmsprop": 0.02, "lamb": 0.03}[cell["optim.name"]]
    quality += {"relu": 0.03, "gelu": 0.04, "tanh": 0.0, "sigmoid": -0.05}[cell["model.activation"]]
    quality -= 0.02 * abs(np.log10(cell["optim.lr"]) + 2.5) + 0.01 * abs(cell["model.depth"] - 3)
    ceiling = float(np.clip(0.85 + quality, 0.1, 0.99))
    e = np.arange(1, epochs + 1)
    return np.clip(ceiling * (1 - np.exp(-e / 12)) + rng.normal(0, 0.005, epochs), 0, 1)


def write_run(root: Path, sweep: str, index: int, cell: dict, epochs: int, *, status: str = "DONE",
              epochs_per_part: int = 1, seed: int = 0, compact: bool = True) -> Path:
    """One synthetic run directory as the engine lays it out (DESIGN §2); status DONE, INCOMPLETE
    (stopped after half its epochs, no summary), FAILED or PRUNED. DONE, FAILED and PRUNED runs end
    with their parts compacted (unless `compact` is false)."""
    rng = np.random.default_rng([seed, index])
    run_id = f"{sweep}-{index:05d}"
    rdir = root / "runs" / run_id
    cfg = C.to_dict(C.Config())
    for key, value in {**cell, "name": sweep, "output.sweep": sweep, "output.cell": f"{index:05d}",
                       "output.run": run_id, "trainer.epochs": epochs}.items():
        C.set_dotted(cfg, key, value)
    rdir.mkdir(parents=True)
    (rdir / "config.yaml").write_text(yaml.dump(cfg, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                                                sort_keys=False))
    (rdir / "run.json").write_text(json.dumps({"run_id": run_id, "sweep": sweep, "cell": f"{index:05d}",
                                               "attempts": [{"attempt": 0}]}))
    done = epochs if status in ("DONE", "PRUNED") else max(1, epochs // 2)
    acc = _curve(rng, cell, epochs)[:done]
    w = MetricWriter(rdir, run_id, sweep, roll_parts=ROLL_PARTS if compact else None)
    step = 0
    for epoch in range(done):
        for _ in range(STEPS_PER_EPOCH // LOG_EVERY):
            step += LOG_EVERY
            w.log_many("train", {"loss": 2.3 * (1 - acc[epoch]) + rng.normal(0, 0.05), "lr": cell["optim.lr"],
                                 "img_per_s": 4000 + rng.normal(0, 50)}, epoch=epoch, step=step)
        w.log_many("train", {"epoch_loss": 2.3 * (1 - acc[epoch]), "skipped": 0.0}, epoch=epoch, step=step)
        val = {"loss": 2.3 * (1 - acc[epoch]) + 0.1, "acc1": acc[epoch], "acc5": min(1.0, acc[epoch] + 0.1),
               "precision": acc[epoch], "recall": acc[epoch], "f1": acc[epoch] - 0.01}
        val.update({f"acc_class/{k}": acc[epoch] for k in range(CLASSES)})
        w.log_many("val", val, epoch=epoch, step=step)
        if (epoch + 1) % epochs_per_part == 0:
            w.flush()
    best_epoch = int(np.argmax(acc))
    test = {"loss": 2.3 * (1 - acc[best_epoch]) + 0.12, "acc1": acc[best_epoch] - 0.01, "f1": acc[best_epoch] - 0.02}
    if status == "DONE":
        w.log_many("test", test, epoch=done - 1, step=step)
    w.close()
    if status == "INCOMPLETE":
        return rdir
    if status == "FAILED":
        mark_failed(rdir, "RuntimeError: synthetic failure")
        if compact:  # as logs.record_failure does
            compact_metrics(rdir)
        return rdir
    summary = {"run_id": run_id, "sweep": sweep, "status": "DONE", "monitor": "val/acc1",
               "best": float(acc[best_epoch]), "best_epoch": best_epoch, "epochs": done, "steps": step,
               "wall_s": 60.0 * done / 10, "gpu_hours": done / 600, "img_per_s": 4000.0}
    if status == "DONE":
        summary.update({f"test/{k}": v for k, v in test.items()})
    write_summary(rdir, summary, config=cfg)
    mark_done(rdir)
    if status == "PRUNED":
        (rdir / "PRUNED").write_text("successive halving: rung 1 of 3\n")
    if compact:
        compact_metrics(rdir)
    return rdir


@contextlib.contextmanager
def _no_fsync():
    """Synthetic runs need not survive a power cut: skip the writers' fsyncs (about 10 ms each here,
    100 parts per run), which only slow down making the data, not reading it."""
    saved = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = saved


def write_synthetic_sweep(root: str | os.PathLike, n_runs: int, epochs: int, *, sweep: str = "scale",
                          epochs_per_part: int = 1, mixed_status: bool = True, seed: int = 0,
                          compact: bool = True) -> list[Path]:
    """`n_runs` synthetic cells of GRID under `root`/runs; some INCOMPLETE/FAILED/PRUNED if `mixed_status`."""
    root = Path(root)
    out = []
    with _no_fsync():
        for i, cell in enumerate(grid_cells(n_runs)):
            status = "DONE"
            if mixed_status:  # per 100 cells: 3 INCOMPLETE, 2 FAILED, 5 PRUNED
                status = ("INCOMPLETE" if i % 100 < 3 else "FAILED" if i % 100 < 5 else "PRUNED" if i % 100 < 10
                          else "DONE")
            out.append(write_run(root, sweep, i, cell, epochs, status=status, epochs_per_part=epochs_per_part,
                                 seed=seed, compact=compact))
    return out


def add_attempt(rdir: Path, epochs: int = 2) -> None:
    """A resumed attempt that replays the run's last epoch and adds one: a new part, read again."""
    from imgtrain.logs import read_metrics

    last = read_metrics(rdir, columns=["epoch", "step"])
    epoch, step = int(max(last["epoch"].to_pylist())), int(max(last["step"].to_pylist()))
    with MetricWriter(rdir, rdir.name, rdir.name.rsplit("-", 1)[0], attempt=1) as w:
        for e in range(epoch, epoch + epochs):
            step += STEPS_PER_EPOCH
            w.log_many("val", {"loss": 0.5, "acc1": 0.5}, epoch=e, step=step)


def timed(fn, repeats: int = 1) -> tuple[float, float, object]:
    """(best wall seconds, CPU seconds of that call, result). CPU time is printed too because a
    shared machine's load stretches wall time: on an idle one, wall is at most about the CPU time."""
    best, cpu, out = float("inf"), 0.0, None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, time.process_time() - c0
    return best, cpu, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--epochs-per-part", type=int, default=1, help="epochs per metrics part file (engine: 1)")
    p.add_argument("--no-compact", action="store_true", help="keep every part of finished runs (no compaction)")
    p.add_argument("--repeats", type=int, default=3, help="timed cold and warm analyses; the best counts")
    p.add_argument("--dir", help="keep the synthetic root here (reused when it already holds runs)")
    args = p.parse_args()

    from imgtrain.analysis import analyze

    tmp = None
    root = Path(args.dir) if args.dir else Path(tmp := tempfile.mkdtemp(prefix="analysis-scale-"))
    try:
        if not (root / "runs").is_dir():
            t0 = time.perf_counter()
            write_synthetic_sweep(root, args.runs, args.epochs, epochs_per_part=args.epochs_per_part,
                                  compact=not args.no_compact)
            print(f"wrote {args.runs} runs x {args.epochs} epochs in {time.perf_counter() - t0:.1f} s")
        parts = list((root / "runs").glob("*/metrics/*.parquet"))
        print(f"root: {root} ({len(parts)} metric files, {sum(1 for f in parts if f.name.startswith('compact-'))} "
              f"of them merged ones; {sum(f.stat().st_size for f in parts) / 2**20:.1f} MiB; {os.cpu_count()} CPUs)")
        out = root / "analysis"

        def cold_run():
            shutil.rmtree(out, ignore_errors=True)
            return analyze(root, out=out, plots=False)

        cold, cold_cpu, result = timed(cold_run, args.repeats)
        print(f"runs: {result.board.num_rows} ({', '.join(f'{n} {s}' for s, n in result.status_counts.items())}), "
              f"{result.metric_rows:,} metric rows")
        print(f"cold (no cache: every run read with read_metrics, cache written): {cold:.3f} s, CPU {cold_cpu:.3f} s  "
              f"[{', '.join(f'{k} {v:.2f}s' for k, v in result.timings.items())}]")
        warm, warm_cpu, result = timed(lambda: analyze(root, out=out, plots=False), args.repeats)
        print(f"warm (nothing changed since): {warm:.3f} s, CPU {warm_cpu:.3f} s  "
              f"[{', '.join(f'{k} {v:.2f}s' for k, v in result.timings.items())}]")
        changed = sorted((root / "runs").iterdir())[:: max(1, args.runs // 50)]
        for rdir in changed:
            add_attempt(rdir)
        incr, incr_cpu, result = timed(lambda: analyze(root, out=out, plots=False))
        print(f"incremental ({len(changed)} runs gained a resumed attempt's part): {incr:.3f} s, CPU {incr_cpu:.3f} s")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "jobs/analyze.py"), str(root), "--out", str(out), "--no-plots"],
                       check=True, stdout=subprocess.DEVNULL)
        cli = time.perf_counter() - t0
        print(f"CLI `jobs/analyze.py ROOT --no-plots`, warm, whole process with imports: {cli:.3f} s")
        plotted, plotted_cpu, result = timed(lambda: analyze(root, out=out))
        print(f"with default figures ({len(result.images)} PNGs: overlay, heat map, confusion matrix, "
              f"top-20 per-run curves): {plotted:.3f} s, CPU {plotted_cpu:.3f} s")
        print(f"read + leaderboard + report of {args.runs} runs x {args.epochs} epochs: {cold:.3f} s cold, "
              f"{warm:.3f} s warm; target {TARGET_S:.1f} s (ratio from the cold wall time); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"ratio: {TARGET_S / cold:.2f}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
