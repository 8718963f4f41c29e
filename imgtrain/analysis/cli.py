"""Analyse the runs under ROOT (or one sweep of them): a leaderboard (CSV + Markdown), learning
curves, a heat map over two grid keys, the best run's confusion matrix, and report.md linking it all.

examples:
  python jobs/analyze.py runs/                          # every run under runs/ -> runs/analysis/
  python jobs/analyze.py runs/ --sweep cifar10_mlp      # one sweep -> runs/analysis/cifar10_mlp/
  python jobs/analyze.py runs/ --sweep cifar10_mlp --heatmap optim.name model.activation
  python jobs/analyze.py runs/ --metric val/f1 --out /tmp/report
  python jobs/analyze.py runs/ --sweep big --no-plots   # tables and report only (fastest)
  python jobs/analyze.py runs/ --study S004             # S004's numbers beside ours -> runs/analysis/studies/

Ranking: each run by its monitored metric (summary.parquet's `monitor`, else the config's
trainer.monitor), its best value recomputed from the Parquet metrics, so unfinished, failed and
pruned runs are listed with their best so far. Per-run learning curves are drawn for the top
--plot-top runs only (default 20) and the overlay per sweep shows the same top runs, so a
1,000-cell sweep does not wait on 1,000 PNGs (--no-plots skips figures altogether). What was read
is cached under OUT/.cache: analysing again reads only the runs that changed since (--no-cache
reads everything).
Exit status: 0 done, 2 bad arguments (missing ROOT, unknown sweep, key or study, a bad study file, no runs).
"""
import argparse
import sys
import warnings
from pathlib import Path

from imgtrain import analysis


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
    p.add_argument("--study", metavar="ID",
                   help="put the runs of a reference study (jobs/studies/ID.yaml, e.g. S004) beside its reported "
                        "numbers: OUT/ID.csv + one PNG per experiment group (default OUT: ROOT/analysis/studies)")
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
    if args.study:
        return study_main(root, args)
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


def study_main(root: Path, args: argparse.Namespace) -> int:
    """--study ID: the study's numbers, ours beside them (imgtrain.studies.reference)."""
    from imgtrain.studies import reference as studies

    try:
        study = studies.load_study(args.study)
    except studies.StudyError as e:
        return fail(str(e))
    cmp = studies.compare(study, root)
    out = Path(args.out) if args.out else root / "analysis" / "studies"
    files = studies.write_comparison(cmp, out, plots=not args.no_plots)
    with_run = sorted({r["experiment"] for r in cmp.rows if r["run_id"]})
    print(f"{study.id} ({study.title}): {len(study.experiments)} experiments, {len(cmp.rows)} numbers; "
          f"{len(with_run)} experiments with a run under {root}")
    if with_run:
        print(studies.table_text(cmp), end="")
    if cmp.no_run:
        print(f"no run yet ({len(cmp.no_run)} experiments):")
        for x in cmp.no_run:
            print(f"  {x.id}: {x.recipe.kind} {x.recipe.target}" + (f" cell {studies._cell_text(x.match_cell())}"
                                                                   if x.match_cell() else ""))
    if cmp.no_recipe:
        print("no recipe (reported for reference only): " + ", ".join(x.id for x in cmp.no_recipe))
    for r in cmp.missing_recipes:
        print(f"note: recipe {r.key}: {r.target} is not in the repository")
    print(f"wrote {files['csv']} (+ {len(files['plots'])} PNGs)")
    return 0

