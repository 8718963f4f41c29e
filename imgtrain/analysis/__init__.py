"""Runs -> tables and figures (DESIGN §2, §3). Importable from notebooks; jobs/analyze.py wraps it.

    runs = load_runs(root, sweep="s1")       # every run dir: status, config, summary, metric rows
    board = leaderboard(runs)                # pyarrow Table, one row per run, best first
    fig = plot_heatmap(board, "optim.name", "model.activation")
    result = analyze(root, sweep="s1")       # everything, written under <root>/analysis/s1/

Metric rows come from `imgtrain.logs.read_metrics` (highest attempt wins per step), only the columns
the analysis uses. A finished run's parts are compacted into one file when it ends (a running run's
every 16 parts), so a cold read is about one file per run; `load_runs` also keeps what it read in a
cache directory (analyze() uses
<out>/.cache): metric files are never rewritten once closed (a compaction writes a new name), so a
run whose file list, summary and config are unchanged is served from the cache and only changed runs
are read again.
Plain functions over pyarrow tables; matplotlib through its Agg canvas (no pyplot state), no pandas.

Modules, each importing only those above it: load.py (run dirs -> RunSet, the read cache), board.py
(the leaderboard), text.py (CSV, Markdown, row labels), plots.py (figures), report.py (analyze(),
report.md). The names below are the public API; import from here.
"""
from imgtrain.analysis.load import (METRIC_COLUMNS, METRICS_SCHEMA, AnalysisWarning, RunInfo, RunSet,
                                    load_runs, run_status)
from imgtrain.analysis.board import (best_values, board_mode, board_varied, leaderboard, monitor_of,
                                     varied_keys)
from imgtrain.analysis.text import cell_label, to_markdown, write_csv
from imgtrain.analysis.plots import (DEFAULT_PLOT_TOP, heatmap_table, learning_curves_figure, metric_series,
                                     plot_confusion_matrix, plot_heatmap, plot_learning_curves,
                                     plot_sweep_curves)
from imgtrain.analysis.report import Analysis, analyze, default_out, write_report

__all__ = ["METRIC_COLUMNS", "METRICS_SCHEMA", "AnalysisWarning", "RunInfo", "RunSet", "load_runs", "run_status",
           "best_values", "board_mode", "board_varied", "leaderboard", "monitor_of", "varied_keys",
           "cell_label", "to_markdown", "write_csv", "DEFAULT_PLOT_TOP", "heatmap_table",
           "learning_curves_figure", "metric_series", "plot_confusion_matrix", "plot_heatmap",
           "plot_learning_curves", "plot_sweep_curves", "Analysis", "analyze", "default_out", "write_report"]
