#!/usr/bin/env python
"""Analyse the runs under ROOT (or one sweep of them): a leaderboard (CSV + Markdown), learning
curves, a heat map over two grid keys, the best run's confusion matrix, and report.md linking it all.

examples:
  python jobs/analyze.py runs/                          # every run under runs/ -> runs/analysis/
  python jobs/analyze.py runs/ --sweep cifar10_mlp      # one sweep -> runs/analysis/cifar10_mlp/
  python jobs/analyze.py runs/ --sweep cifar10_mlp --heatmap optim.name model.activation
  python jobs/analyze.py runs/ --metric val/f1 --out /tmp/report
  python jobs/analyze.py runs/ --sweep big --no-plots   # tables and report only (fastest)

Ranking: each run by its monitored metric (summary.parquet's `monitor`, else the config's
trainer.monitor), its best value recomputed from the Parquet metrics, so unfinished, failed and
pruned runs are listed with their best so far. Per-run learning curves are drawn for the top
--plot-top runs only (default 20) and the overlay per sweep shows the same top runs, so a
1,000-cell sweep does not wait on 1,000 PNGs (--no-plots skips figures altogether). What was read
is cached under OUT/.cache: analysing again reads only the runs that changed since (--no-cache
reads everything).
Exit status: 0 done, 2 bad arguments (missing ROOT, unknown sweep or key, no runs).
"""
import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgtrain import analysis  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="analyze.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="ROOT", help="output root holding runs/ (output.root), a runs/ dir, or one run dir")
    p.add_argument("--sweep", metavar="NAME", help="only the runs of this sweep (cfg.output.sweep)")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default ROOT/analysis, or ROOT/analysis/NAME with --sweep)")
    p.add_argument("--heatmap", nargs=2, metavar=("KEY_X", "KEY_Y"),
                   help="config keys of the heat map, e.g. optim.name model.activation "
                        "(default: the first two varied keys)")
    p.add_argument("--agg", choices=("mean", "max", "min"), default="mean",
                   help="how the heat map aggregates the best value over the other keys (default mean)")
    p.add_argument("--metric", metavar="SPLIT/NAME",
                   help="rank and plot every run by this metric, e.g. val/f1 (default: each run's monitored metric)")
    p.add_argument("--plot-top", type=int, default=analysis.DEFAULT_PLOT_TOP, metavar="N",
                   help="per-run learning curves (and overlay lines) for the N best runs only; 0: none, -1: all "
                        f"(default {analysis.DEFAULT_PLOT_TOP})")
    p.add_argument("--no-plots", action="store_true", help="write the leaderboard and report only, no figures")
    p.add_argument("--cm-normalize", action="store_true", help="row-normalise the confusion matrix")
    p.add_argument("--rows", type=int, default=20, metavar="N", help="leaderboard rows printed here (default 20)")
    p.add_argument("--no-cache", action="store_true", help="read every run again instead of using OUT/.cache")
    return p.parse_args(argv)


def fail(msg: str) -> int:
    print(f"analyze.py: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        return fail(f"no such run root: {root}")
    warnings.formatwarning = lambda msg, category, *a, **k: f"warning: {msg}\n"
    try:
        result = analysis.analyze(
            root, args.sweep, args.out, heatmap=tuple(args.heatmap) if args.heatmap else None, metric=args.metric,
            plot_top=None if args.plot_top < 0 else args.plot_top, plots=not args.no_plots,
            normalize_cm=args.cm_normalize, agg=args.agg, cache=not args.no_cache)
    except (LookupError, FileNotFoundError) as e:  # no runs / unknown sweep / unknown heat-map key
        return fail(str(e).strip("'\""))
    board = result.board
    counts = ", ".join(f"{n} {s}" for s, n in result.status_counts.items())
    what = f"sweep {args.sweep}" if args.sweep else str(root)
    print(f"{what}: {board.num_rows} runs ({counts}); varied: {', '.join(result.varied) or 'none'}")
    cols = ["rank", "run_id", "status", "best", "best_epoch", *result.varied,
            *[c for c in board.column_names if c.startswith("test/")][:2], "wall_s"]
    print(analysis.to_markdown(board, limit=args.rows, columns=cols), end="")
    if board.num_rows > args.rows:
        print(f"... {board.num_rows - args.rows} more in leaderboard.csv")
    for n in result.notes:
        print(f"note: {n}")
    print(f"wrote {result.files['report']} (+ leaderboard.csv, leaderboard.md, {len(result.images)} PNGs) "
          f"in {result.timings['total']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
