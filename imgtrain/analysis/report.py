"""The whole analysis (jobs/analyze.py): load, rank, draw, and report.md linking it all."""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from imgtrain.analysis.board import _select, board_mode, board_varied, leaderboard, varied_keys
from imgtrain.analysis.load import AnalysisWarning, RunSet, _gc_paused, _read_run_json, load_runs
from imgtrain.analysis.plots import (DEFAULT_PLOT_TOP, _save, heatmap_table, learning_curves_figure,
                                     plot_confusion_matrix, plot_heatmap, plot_sweep_curves)
from imgtrain.analysis.text import cell_label, to_markdown, write_csv
from imgtrain.logs import UnreadablePartWarning, atomic_write_bytes, iter_run_dirs
from imgtrain.runs import DONE, FAILED, INCOMPLETE, NEW, PRUNED, SPLITS


@dataclass
class Analysis:
    root: Path
    out: Path
    sweep: Optional[str]
    runs: RunSet
    board: pa.Table
    varied: list[str]
    files: dict[str, Path]  # what was written: leaderboard_csv, leaderboard_md, report, ...
    images: list[Path]
    heatmaps: dict[str, tuple[str, str]]  # group -> (key_x, key_y) drawn
    notes: list[str]  # what was skipped and why
    warnings: list[str]
    timings: dict[str, float]

    @property
    def status_counts(self) -> dict[str, int]:
        """Runs per status: DONE, PRUNED, INCOMPLETE, FAILED, NEW (those present, in this order)."""
        statuses = self.board["status"].to_pylist()
        order = [DONE, PRUNED, INCOMPLETE, FAILED, NEW]
        return {s: statuses.count(s) for s in order + sorted(set(statuses) - set(order)) if s in statuses}

    @property
    def metric_rows(self) -> int:
        return self.runs.metrics.num_rows


def default_out(root: str | os.PathLike, sweep: Optional[str] = None) -> Path:
    base = Path(root) / "analysis"
    return base / sweep if sweep else base


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name) or "_"


def _groups(board: pa.Table) -> dict[str, list[int]]:
    """Board rows per sweep, in board order; runs without a sweep form the group 'runs'."""
    out: dict[str, list[int]] = {}
    for i, s in enumerate(board["sweep"].to_pylist()):
        out.setdefault(s or "runs", []).append(i)
    return out


def analyze(root: str | os.PathLike, sweep: Optional[str] = None, out: str | os.PathLike | None = None, *,
            heatmap: Optional[tuple[str, str]] = None, metric: Optional[str] = None,
            plot_top: Optional[int] = DEFAULT_PLOT_TOP, plots: bool = True, normalize_cm: bool = False,
            agg: str = "mean", cache: bool = True, report_rows: int = 50) -> Analysis:
    """Leaderboard (CSV + Markdown), learning curves (per run for the top `plot_top` runs, None = all;
    one overlay per sweep), a heat map per sweep over `heatmap` keys (default: its first two varied
    keys), the best run's confusion matrix, and report.md linking them, all under `out` (default
    <root>/analysis[/<sweep>]). `plots=False` writes only the tables and the report."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    root = Path(root)
    out = Path(out) if out is not None else default_out(root, sweep)
    if heatmap is not None:  # the cfg.* column spelling works too
        heatmap = tuple(k[4:] if k.startswith("cfg.") else k for k in heatmap)
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught, _gc_paused():
            warnings.simplefilter("always")
            runs = load_runs(root, sweep, cache_dir=out / ".cache" if cache else None)
            timings["read"] = time.perf_counter() - t0
            board = _rank(runs, root, sweep, metric, heatmap)
            timings["leaderboard"] = time.perf_counter() - t0 - timings["read"]
    finally:  # outside the catching context, so the warnings reach the caller's filters
        notes_w = _replay(caught)
    varied = board_varied(board)
    files = {"leaderboard_csv": write_csv(board, out / "leaderboard.csv")}
    files["leaderboard_md"] = atomic_write_bytes(out / "leaderboard.md", to_markdown(board).encode())
    t1 = time.perf_counter()
    sections: list[str] = []
    images: list[Path] = []
    heatmaps: dict[str, tuple[str, str]] = {}
    notes: list[str] = []
    if plots:
        sections, images, heatmaps, notes = _draw_sweeps(runs, board, out, heatmap, plot_top, agg)
        more, run_images, run_notes = _draw_runs(runs, board, out, plot_top)
        cm_section, cm_path, cm_notes = _draw_confusion(runs, board, out, normalize_cm)
        sections += more + cm_section
        images += run_images + ([cm_path] if cm_path else [])
        notes += run_notes + cm_notes
        if cm_path:
            files["confusion_matrix"] = cm_path
    else:
        notes.append("figures not drawn (--no-plots)")
    notes += [f"{r.run_id}: world size changed between attempts, {r.world_text()} (run.json)"
              for r in runs.runs if r.world_text()]
    timings["plots"] = time.perf_counter() - t1
    result = Analysis(root, out, sweep, runs, board, varied, files, images, heatmaps, notes, notes_w, timings)
    files["report"] = write_report(result, sections, report_rows)
    timings["total"] = time.perf_counter() - t0
    return result


def _rank(runs: RunSet, root: Path, sweep: Optional[str], metric: Optional[str], heatmap) -> pa.Table:
    """The leaderboard, after the checks that make a usage error (LookupError) of an empty selection,
    an unknown --metric or a heat-map key that does not vary."""
    if not runs.runs:
        where = f"of sweep {sweep!r} " if sweep else ""
        raise LookupError(f"no runs {where}under {root}" + _sweeps_hint(root, sweep))
    if metric is not None:
        _check_metric(runs, metric)
    board = leaderboard(runs, metric)
    if heatmap is not None:  # a misspelt key fails before anything is drawn
        heatmap_table(board, *heatmap)
    return board


def _check_metric(runs: RunSet, metric: str) -> None:
    """A --metric no run logged is a typo: say which split/metric pairs exist."""
    split, _, name = metric.partition("/")
    if split in SPLITS and name and _select(runs.metrics, split, name, columns=["run_id"]).num_rows:
        return
    pairs = pc.unique(pc.binary_join_element_wise(  # the error path only: 3 million joins are fine
        runs.metrics["split"].cast(pa.string()), runs.metrics["metric"].cast(pa.string()), "/")).to_pylist()
    logged = sorted(p for p in pairs if p.count("/") == 1)  # per-class metrics left out
    raise LookupError(f"no run logged {metric!r} (split/metric; logged: {', '.join(logged)})")


def _replay(caught: list) -> list[str]:
    """Warn again, once each, what loading said; the report lists the ones about the runs."""
    seen, about_runs = set(), []
    for w in caught:
        msg = str(w.message)
        if msg in seen:
            continue
        seen.add(msg)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if issubclass(w.category, (UnreadablePartWarning, AnalysisWarning)):
            about_runs.append(msg)
    return about_runs


def _sweeps_hint(root: Path, sweep: Optional[str]) -> str:
    """' (sweeps there: a, b)' from the runs' run.json files, for a --sweep that matched nothing."""
    if sweep is None:
        return ""
    names = sorted({s for d in iter_run_dirs(root) if (s := _read_run_json(d)[0])})
    return f" (sweeps there: {', '.join(names)})" if names else " (no sweeps there)"


def _rel(path: Path, out: Path) -> str:
    return quote(path.relative_to(out).as_posix())


def _draw_sweeps(runs: RunSet, board: pa.Table, out: Path, heatmap, plot_top, agg) -> tuple[list, list, dict, list]:
    """Per sweep: the overlaid curves and the heat map. (report sections, images, heat-map keys, notes)"""
    groups = _groups(board)
    info = runs.by_id()
    curve_md, heat_md, images, heatmaps, notes = [], [], [], {}, []
    for name, rows in groups.items():
        sub = board.take(rows)
        suffix = f"_{_safe(name)}" if len(groups) > 1 else ""
        if plot_top != 0:
            p = out / f"curves{suffix}.png"
            plot_sweep_curves(runs, sub, p, top=plot_top, name=name)
            images.append(p)
            curve_md.append(f"![{name} learning curves]({_rel(p, out)})")
        varied = varied_keys([info[r].config for r in sub["run_id"].to_pylist()])
        keys = heatmap or tuple(varied[:2])
        if len(keys) < 2:
            notes.append(f"{name}: no heat map (needs two varied keys; varied: {', '.join(varied) or 'none'})")
            continue
        p = out / f"heatmap{suffix}.png"
        plot_heatmap(sub, keys[0], keys[1], p, agg=agg, over=[k for k in varied if k not in keys])
        images.append(p)
        heatmaps[name] = keys
        heat_md.append(f"![{name} heat map: {keys[0]} x {keys[1]}]({_rel(p, out)})")
    sections = []
    if curve_md:
        sections.append("## Learning curves\n\n" + "\n\n".join(curve_md))
    if heat_md:
        sections.append(f"## Heat map ({agg} of best over the other varied keys)\n\n" + "\n\n".join(heat_md))
    return sections, images, heatmaps, notes


def _draw_runs(runs: RunSet, board: pa.Table, out: Path, plot_top) -> tuple[list[str], list, list]:
    """Per-run curves for the best runs only: a 1,000-cell sweep would otherwise spend minutes here."""
    n = board.num_rows if plot_top is None else min(plot_top, board.num_rows)
    images, md = [], []
    for i in range(n):
        rid, monitor = board["run_id"][i].as_py(), board["monitor"][i].as_py()
        p = out / "curves" / f"{_safe(rid)}.png"
        _save(learning_curves_figure(runs.rows(rid), rid, monitor, title=f"#{i + 1} {rid}: {cell_label(board, i)}"), p)
        images.append(p)
        md.append(f"![{rid}]({_rel(p, out)})")
    notes = [f"per-run learning curves for the top {n} of {board.num_rows} runs (--plot-top)"] \
        if n < board.num_rows else []
    return ([f"## Per-run learning curves (top {n})\n\n" + "\n".join(md)] if md else []), images, notes


def _draw_confusion(runs: RunSet, board: pa.Table, out: Path, normalize: bool) -> tuple[list, Optional[Path], list]:
    found = _best_confusion(runs, board)
    if found is None:
        return [], None, ["no confusion matrix (no ranked run has one in test_results.json)"]
    rid, results = found
    split = results.get("split", "test")
    p = out / "confusion_matrix.png"
    norm = ", row-normalised" if normalize else ""
    plot_confusion_matrix(results, p, normalize=normalize, title=f"{rid}: {split} confusion matrix{norm}")
    section = f"## Confusion matrix of the best run ({rid}, {split} split)\n\n![confusion matrix]({_rel(p, out)})"
    return [section], p, []


def _best_confusion(runs: RunSet, board: pa.Table) -> Optional[tuple[str, dict]]:
    info = runs.by_id()
    for rid in board["run_id"].to_pylist():
        if not info[rid].has_test_results:
            continue
        try:
            results = json.loads((info[rid].path / "test_results.json").read_text())
        except (OSError, ValueError):
            continue
        if results.get("confusion_matrix"):
            return rid, results
    return None


def write_report(result: Analysis, sections: Sequence[str] = (), rows: int = 50) -> Path:
    """report.md: what was analysed, the leaderboard inline (first `rows` rows), links to the tables
    and the figures (relative links, so the folder can be moved or published as is)."""
    board, out = result.board, result.out
    title = f"sweep {result.sweep}" if result.sweep else f"{result.root}"
    counts = ", ".join(f"{n} {s}" for s, n in result.status_counts.items())
    modes = {m: board_mode(board, m) for m in dict.fromkeys(board["monitor"].to_pylist())}
    lines = [f"# Analysis of {title}", "",
             f"Root `{result.root}`; {board.num_rows} runs ({counts}); generated "
             f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} by `jobs/analyze.py`.", "",
             "Ranked by " + ", ".join(f"`{m}` ({'higher' if d == 'max' else 'lower'} is better)"
                                      for m, d in modes.items())
             + "; `best` is recomputed from each run's Parquet metrics (best so far for runs that have not "
               "finished); `best_epoch` counts from 1, as the training logs do (the Parquet `epoch` column counts from 0).",
             f"Varied keys: {', '.join(f'`{k}`' for k in result.varied) or 'none'}.", "",
             "## Leaderboard", "",
             f"Full table: [leaderboard.csv]({_rel(result.files['leaderboard_csv'], out)}), "
             f"[leaderboard.md]({_rel(result.files['leaderboard_md'], out)})"
             + (f"; the first {rows} of {board.num_rows} runs below." if board.num_rows > rows else "."), "",
             to_markdown(board, limit=rows)]
    for s in sections:
        lines += [s, ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    if result.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in result.warnings] + [""]
    return atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
