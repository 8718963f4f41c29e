"""imgtrain.analysis and jobs/analyze.py: leaderboard, figures and report over real tiny digits runs
(a 3-cell sweep trained once per module) and over synthetic run directories for the edge cases."""
import csv
import importlib.util
import json
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from matplotlib.image import imread

from tests.conftest import PY, ROOT, run_cmd, train_cmd

sys.path.insert(0, str(ROOT))
from benchmarks.analysis_scale import write_run, write_synthetic_sweep  # noqa: E402
from imgtrain import analysis as A  # noqa: E402
from imgtrain.logs import (SCHEMA, MetricWriter, UnreadablePartWarning, read_metrics, read_summaries,  # noqa: E402
                           write_summary)

CONFIG = ROOT / "tests/configs/tiny_digits.yaml"
ANALYZE = ROOT / "jobs/analyze.py"
# a 2 x 2 grid with one cell left out: (0.2, tanh) is the blank in the heat map
CELLS = {
    "lr05-relu": ["optim.lr=0.05", "model.activation=relu"],
    "lr2-relu": ["optim.lr=0.2", "model.activation=relu"],
    "lr05-tanh": ["optim.lr=0.05", "model.activation=tanh"],
}


@pytest.fixture(scope="module")
def sweep_root(digits_shards, tmp_path_factory) -> Path:
    """Three real 2-epoch runs forming sweep s1. jobs/train.py's own main() trains them one after
    the other in one process: importing torch and timm is most of a tiny run's cost (~10 s each)."""
    root = tmp_path_factory.mktemp("analysis") / "root"
    argvs = [[str(a) for a in train_cmd(CONFIG, f"data.path={digits_shards}", f"output.root={root}",
                                        f"output.run=s1-{cell}", "output.sweep=s1", f"output.cell={cell}",
                                        "trainer.epochs=2", "data.batch_size=64", *overrides)[2:]]
             for cell, overrides in CELLS.items()]
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from imgtrain.engine.cli import main; "
              "import json; sys.exit(max(main(a) for a in json.loads(sys.argv[2])))")
    run_cmd([PY, "-c", script, ROOT, json.dumps(argvs)])
    return root


@pytest.fixture(scope="module")
def analysed(sweep_root, tmp_path_factory):
    return A.analyze(sweep_root, "s1", tmp_path_factory.mktemp("out") / "s1")


@pytest.fixture(scope="module")
def synthetic_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_sweep(root, 20, 6, sweep="syn", epochs_per_part=2)
    return root


@pytest.fixture
def synthetic(synthetic_template, tmp_path) -> Path:
    """20 synthetic cells x 6 epochs: 3 INCOMPLETE (no summary), 2 FAILED, 5 PRUNED, 10 DONE (a fresh
    copy per test: tests add parts and markers)."""
    shutil.copytree(synthetic_template / "runs", tmp_path / "runs")
    return tmp_path


def plain(table: pa.Table) -> pa.Table:
    """A metrics table with plain string columns, as read_metrics returns it."""
    return table.cast(pa.schema([SCHEMA.field(c) for c in table.column_names]))


def direct_best(root, split="val", metric="acc1", how="max") -> dict[str, float]:
    """The same question asked of read_metrics with plain pyarrow."""
    t = read_metrics(root)
    t = t.filter(pc.and_(pc.equal(t["split"], split), pc.equal(t["metric"], metric)))
    g = t.group_by("run_id").aggregate([("value", how)])
    return dict(zip(g["run_id"].to_pylist(), g[f"value_{how}"].to_pylist()))


# ------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_leaderboard_best_matches_direct_query_and_summaries(sweep_root, analysed):
    board = analysed.board
    best = direct_best(sweep_root)
    assert board.num_rows == 3 and set(board["status"].to_pylist()) == {"DONE"}
    top = max(best.values())
    assert board["run_id"][0].as_py() in [rid for rid, v in best.items() if v == top]  # ties are possible
    assert board["best"].to_pylist() == sorted(best.values(), reverse=True)
    assert board["rank"].to_pylist() == [1, 2, 3]
    assert analysed.warnings == []  # the summaries' best agrees with the Parquet rows
    summaries = {r["run_id"]: r for r in read_summaries(sweep_root).to_pylist()}
    for row in board.to_pylist():
        s = summaries[row["run_id"]]
        assert row["monitor"] == s["monitor"] == "val/acc1"
        assert row["best"] == pytest.approx(s["best"], abs=1e-12)
        assert row["best_epoch"] == s["best_epoch"] + 1  # read by people: from 1; summary.parquet: from 0
        assert row["epochs"] == 2
        assert row["test/acc1"] == pytest.approx(s["test/acc1"])
        assert row["wall_s"] == pytest.approx(s["wall_s"]) and row["img_per_s"] > 0
        assert "test/samples" not in row and "test/acc_class/0" not in row
        # the trainer compacted the DONE run's parts (one per epoch, then the test rows) into one file
        assert [p.name for p in (sweep_root / "runs" / row["run_id"] / "metrics").iterdir()] == [
            "compact-a000-000000.parquet"]


@pytest.mark.slow
def test_varied_keys_are_exactly_the_keys_that_differ(analysed):
    assert analysed.varied == ["model.activation", "optim.lr"]  # config order: model before optim
    rows = {r["run_id"]: r for r in analysed.board.to_pylist()}
    assert (rows["s1-lr2-relu"]["optim.lr"], rows["s1-lr2-relu"]["model.activation"]) == (0.2, "relu")
    assert (rows["s1-lr05-tanh"]["optim.lr"], rows["s1-lr05-tanh"]["model.activation"]) == (0.05, "tanh")
    # run id, cell, sweep differ too, but are bookkeeping, not hyperparameters
    assert not any(k.startswith("output.") for k in analysed.varied)


@pytest.mark.slow
def test_csv_parses_back(analysed):
    with open(analysed.files["leaderboard_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    board = analysed.board
    assert list(rows[0]) == board.column_names
    assert [r["run_id"] for r in rows] == board["run_id"].to_pylist()
    assert [float(r["best"]) for r in rows] == board["best"].to_pylist()  # full precision
    assert [int(r["best_epoch"]) for r in rows] == board["best_epoch"].to_pylist()
    assert [float(r["optim.lr"]) for r in rows] == board["optim.lr"].to_pylist()
    assert all(r["note"] == "" for r in rows)
    md = analysed.files["leaderboard_md"].read_text().splitlines()
    assert len(md) == 2 + board.num_rows and md[0].startswith("| rank | run_id |")


@pytest.mark.slow
def test_pngs_are_valid_images(analysed):
    out = analysed.out
    expected = {out / "curves.png", out / "heatmap.png", out / "confusion_matrix.png",
                *(out / "curves" / f"s1-{c}.png" for c in CELLS)}
    assert set(analysed.images) == expected
    for png in expected:
        img = imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01  # something was drawn


@pytest.mark.slow
def test_heatmap_axes_values_and_blank_cell(analysed):
    board = analysed.board
    assert analysed.heatmaps == {"s1": ("model.activation", "optim.lr")}  # default: first two varied keys
    fig = A.plot_heatmap(board, "optim.lr", "model.activation")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("optim.lr", "model.activation")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.05", "0.2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["relu", "tanh"]
    assert ax.get_title().startswith("mean of best val/acc1")
    xs, ys, grid, counts = A.heatmap_table(board, "optim.lr", "model.activation")
    best = {(r["optim.lr"], r["model.activation"]): r["best"] for r in board.to_pylist()}
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            if (x, y) in best:
                assert grid[i, j] == pytest.approx(best[(x, y)]) and counts[i, j] == 1
            else:
                assert (x, y) == (0.2, "tanh") and np.isnan(grid[i, j]) and counts[i, j] == 0
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.3f}" for v in best.values())
    with pytest.raises(KeyError, match="optim.name not varied"):
        A.plot_heatmap(board, "optim.name", "optim.lr")


@pytest.mark.slow
def test_confusion_matrix_of_best_run(analysed):
    best = analysed.board["run_id"][0].as_py()
    results = json.loads((analysed.runs.by_id()[best].path / "test_results.json").read_text())
    fig = A.plot_confusion_matrix(results, normalize=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == results["class_names"]
    assert [t.get_text() for t in ax.get_yticklabels()] == results["class_names"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    shown = np.asarray(ax.images[0].get_array())
    assert np.allclose(shown.sum(axis=1), 1.0)
    cm = np.asarray(results["confusion_matrix"])
    assert np.allclose(shown, cm / cm.sum(axis=1, keepdims=True))
    assert analysed.files["confusion_matrix"].is_file()
    assert f"best run ({best}" in analysed.files["report"].read_text()


@pytest.mark.slow
def test_report_links_exist(analysed):
    text = analysed.files["report"].read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert {"leaderboard.csv", "leaderboard.md", "curves.png", "heatmap.png", "confusion_matrix.png"} <= set(links)
    for link in links:
        assert (analysed.out / link).is_file(), link
    for rid in analysed.board["run_id"].to_pylist():
        assert f"| {rid} |" in text  # leaderboard inline
    assert sum(1 for link in links if link.startswith("curves/")) == 3


@pytest.mark.slow
def test_torn_part_still_analyses_with_a_warning(sweep_root, tmp_path):
    root = tmp_path / "root"
    rdir = root / "runs" / "s1-lr05-relu"
    shutil.copytree(sweep_root / "runs" / "s1-lr05-relu", rdir)
    with MetricWriter(rdir, "s1-lr05-relu", "s1", attempt=1) as w:  # a resumed attempt's part (beside the
        w.log("val", "acc1", 0.5, epoch=2, step=10**6)               # compacted file), torn by a crash
    (part,) = (rdir / "metrics").glob("part-*.parquet")
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    for attempt in range(2):  # the second analysis comes from the cache and must say so again
        with pytest.warns(UnreadablePartWarning, match=part.name):
            result = A.analyze(root, out=tmp_path / "out", plots=False)
        assert result.board["run_id"].to_pylist() == ["s1-lr05-relu"]
        assert result.board["best"][0].as_py() > 0
        assert result.runs.cache_hits == attempt
        assert "## Warnings" in result.files["report"].read_text() and part.name in result.files["report"].read_text()


@pytest.mark.slow
def test_cli_on_a_real_sweep(sweep_root, tmp_path):
    proc = run_cmd([PY, ANALYZE, sweep_root, "--sweep", "s1", "--out", tmp_path / "a", "--plot-top", "1",
                    "--heatmap", "optim.lr", "model.activation", "--cm-normalize"])
    lines = proc.stdout.splitlines()
    assert lines[0] == "sweep s1: 3 runs (3 DONE); varied: model.activation, optim.lr"
    assert lines[1].startswith("| rank | run_id | status | best |")
    assert "note: per-run learning curves for the top 1 of 3 runs (--plot-top)" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "a" / "curves").iterdir()) == [f"{lines[3].split(' | ')[1]}.png"]
    assert (tmp_path / "a" / "report.md").is_file() and (tmp_path / "a" / "heatmap.png").is_file()


def test_plot_learning_curves_keeps_its_signature(synthetic, tmp_path):
    rdir = synthetic / "runs" / "syn-00010"
    png = A.plot_learning_curves(read_metrics(rdir), "syn-00010", tmp_path / "lc.png")
    assert png == tmp_path / "lc.png" and imread(png).shape[0] > 100
    fig = A.learning_curves_figure(read_metrics(rdir), "syn-00010", "val/acc1")
    assert [len(line.get_xdata()) for line in fig.axes[1].lines] == [6]  # one point per epoch


# ------------------------------------------------------------------ synthetic runs


def test_statuses_and_best_so_far(synthetic):
    runs = A.load_runs(synthetic, "syn")
    board = A.leaderboard(runs)
    rows = {r["run_id"]: r for r in board.to_pylist()}
    assert len(rows) == 20
    status = {rid: r["status"] for rid, r in rows.items()}
    assert [status[f"syn-{i:05d}"] for i in range(10)] == ["INCOMPLETE"] * 3 + ["FAILED"] * 2 + ["PRUNED"] * 5
    assert all(status[f"syn-{i:05d}"] == "DONE" for i in range(10, 20))
    assert rows["syn-00003"]["note"] == "RuntimeError: synthetic failure"
    assert rows["syn-00007"]["note"] == "successive halving: rung 1 of 3"
    best = direct_best(synthetic)
    for rid, r in rows.items():
        assert r["best"] == best[rid]
    assert rows["syn-00000"]["epochs"] == 3 and rows["syn-00000"]["wall_s"] is None  # half-way, no summary
    assert rows["syn-00012"]["epochs"] == 6
    assert board["best"].to_pylist() == sorted(best.values(), reverse=True)
    assert rows["syn-00000"]["test/acc1"] is None and rows["syn-00012"]["test/acc1"] is not None
    # the first 20 cells of the synthetic grid: sgd, relu, depth 1..2 x 10 learning rates
    assert A.varied_keys([r.config for r in runs.runs]) == ["model.depth", "optim.lr"]


def test_metric_override_ranks_by_direction(synthetic):
    board = A.leaderboard(A.load_runs(synthetic), metric="val/loss")
    best = direct_best(synthetic, metric="loss", how="min")
    assert board["monitor"].to_pylist() == ["val/loss"] * 20
    assert board["best"].to_pylist() == sorted(best.values())  # lower is better
    assert A.board_mode(board, "val/loss") == "min"


def test_highest_attempt_wins(synthetic):
    rdir = synthetic / "runs" / "syn-00011"
    last = read_metrics(rdir).filter(pc.equal(read_metrics(rdir)["split"], "val")).to_pylist()[-1]
    with MetricWriter(rdir, "syn-00011", "syn", attempt=1) as w:  # a resume replays the last evaluation
        w.log("val", "acc1", 0.999, epoch=last["epoch"], step=last["step"])
    with pytest.warns(A.AnalysisWarning, match="syn-00011: summary.parquet says best val/acc1"):
        board = A.leaderboard(A.load_runs(synthetic))
    assert board["run_id"][0].as_py() == "syn-00011"
    assert board["best"][0].as_py() == 0.999 and board["best_epoch"][0].as_py() == last["epoch"] + 1


def test_cache_reads_only_changed_runs_and_matches_a_fresh_read(synthetic, tmp_path):
    cache = tmp_path / "cache"
    first = A.load_runs(synthetic, cache_dir=cache)
    assert first.cache_hits == 0 and (cache / "index.json").is_file()
    again = A.load_runs(synthetic, cache_dir=cache)
    assert again.cache_hits == 20 and plain(again.metrics).equals(plain(first.metrics))
    with MetricWriter(synthetic / "runs" / "syn-00001", "syn-00001", "syn", attempt=1) as w:
        w.log("val", "acc1", 0.9999, epoch=3, step=10_000)  # the INCOMPLETE run went on
    reason = "val/acc1 0.4134 at epoch 1 is below the keep threshold 0.5140 (rank 3 of 4, keep 2)"
    (synthetic / "runs" / "syn-00000" / "PRUNED").write_text(json.dumps({"reason": reason, "rung": 1}, indent=1))
    shutil.rmtree(synthetic / "runs" / "syn-00019")
    cached = A.load_runs(synthetic, cache_dir=cache)
    assert cached.cache_hits == 18
    fresh = A.load_runs(synthetic)
    assert plain(cached.metrics).equals(plain(fresh.metrics)) and cached.offsets == fresh.offsets
    # the cache changes nothing read_metrics says
    assert plain(fresh.metrics).equals(read_metrics(synthetic, columns=A.METRIC_COLUMNS))
    board, fresh_board = A.leaderboard(cached), A.leaderboard(fresh)
    assert board.equals(fresh_board)
    assert board["run_id"][0].as_py() == "syn-00001" and board.num_rows == 19
    pruned = {r["run_id"]: r for r in board.to_pylist()}["syn-00000"]
    assert (pruned["status"], pruned["note"]) == ("PRUNED", reason)  # the halving's JSON marker


def test_sweep_filter_and_mixed_roots(synthetic):
    write_synthetic_sweep(synthetic, 4, 3, sweep="other", mixed_status=False)
    assert {r.sweep for r in A.load_runs(synthetic, "other").runs} == {"other"}
    result = A.analyze(synthetic, out=synthetic / "all", plot_top=2)
    assert result.board.num_rows == 24 and set(result.board["sweep"].to_pylist()) == {"syn", "other"}
    # name: each sweep's config name; the two sweeps also ran different epoch counts
    assert result.varied == ["name", "model.depth", "optim.lr", "trainer.epochs"]
    names = {p.name for p in result.images}
    assert {"curves_syn.png", "curves_other.png", "heatmap_syn.png"} <= names and "heatmap_other.png" not in names
    assert result.heatmaps == {"syn": ("model.depth", "optim.lr")}
    assert "other: no heat map (needs two varied keys; varied: optim.lr)" in result.notes
    assert len(list((synthetic / "all" / "curves").iterdir())) == 2
    with pytest.raises(LookupError, match=r"no runs of sweep 'nope' under .* \(sweeps there: other, syn\)"):
        A.analyze(synthetic, "nope")


def test_no_plots_and_plot_top(synthetic):
    result = A.analyze(synthetic, "syn", plots=False)
    assert result.out == synthetic / "analysis" / "syn" and result.images == []
    assert {p.name for p in result.out.iterdir()} == {"leaderboard.csv", "leaderboard.md", "report.md", ".cache"}
    result = A.analyze(synthetic, "syn", plot_top=3)
    assert len(list((result.out / "curves").iterdir())) == 3
    assert "per-run learning curves for the top 3 of 20 runs (--plot-top)" in result.notes


def test_root_given_as_the_runs_dir(synthetic):
    """The default output then lands among the runs; it must not be taken for a run next time."""
    first = A.analyze(synthetic / "runs", plots=False)
    assert first.out == synthetic / "runs" / "analysis"
    again = A.analyze(synthetic / "runs", plots=False)
    assert again.board.num_rows == 20 and again.runs.cache_hits == 20


def test_config_yaml_flattens_as_a_summary_does(tmp_path):
    import yaml

    from imgtrain import config as C
    from imgtrain.analysis.load import _read_config
    from imgtrain.logs.summary import summary_row
    data = C.to_dict(C.load(CONFIG, ["data.path=/d", "model.kwargs={a: {b: 1}}", "dist.deepspeed={zero: {x: 2}}"]))
    data["future"] = {"section": {"key": [1, 2]}}  # a config from another version
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    got = _read_config(path, "r")
    assert got == summary_row({"run_id": "r"}, data)  # free-form dicts stay values (as JSON), the rest is flattened
    assert got["cfg.model.kwargs"] == '{"a": {"b": 1}}' and got["cfg.dist.deepspeed"] == '{"zero": {"x": 2}}'
    assert got["cfg.future.section.key"] == "[1, 2]" and got["cfg.data.path"] == "/d"


def test_run_without_metrics_or_summary(tmp_path):
    """A run that wrote only config.yaml and run.json (killed at start-up) is listed, without values."""
    write_run(tmp_path, "z", 0, {"optim.name": "sgd", "model.activation": "relu", "model.depth": 1,
                                 "optim.lr": 0.1, "trainer.seed": 0}, 4)
    bare = tmp_path / "runs" / "z-00001"
    bare.mkdir()
    (bare / "run.json").write_text(json.dumps({"run_id": "z-00001", "sweep": "z"}))
    (bare / "config.yaml").write_text((tmp_path / "runs" / "z-00000" / "config.yaml").read_text())
    board = A.leaderboard(A.load_runs(tmp_path, "z"))
    assert board["run_id"].to_pylist() == ["z-00000", "z-00001"]
    row = board.to_pylist()[1]
    assert (row["status"], row["best"], row["best_epoch"], row["epochs"]) == ("INCOMPLETE", None, None, None)
    # same config, once from summary.parquet and once from config.yaml: nothing may look varied
    assert A.board_varied(board) == []
    assert board.to_pylist()[0]["best"] == direct_best(tmp_path)["z-00000"]


def test_leaderboard_of_one_synthetic_summary_without_test(tmp_path):
    rdir = write_run(tmp_path, "k", 0, {"optim.name": "adam", "model.activation": "gelu", "model.depth": 2,
                                        "optim.lr": 1e-3, "trainer.seed": 0}, 5, status="PRUNED")
    write_summary(rdir, {"run_id": "k-00000", "monitor": "val/acc1", "best": None})  # a summary without a best
    board = A.leaderboard(A.load_runs(tmp_path))
    assert board["status"].to_pylist() == ["PRUNED"] and board["best"][0].as_py() == direct_best(tmp_path)["k-00000"]
    assert A.varied_keys([{"cfg.a": 1, "cfg.b": float("nan")}, {"cfg.a": 1.0, "cfg.b": float("nan")}]) == []
    assert A.varied_keys([{"cfg.a": 1}, {"cfg.a": 1, "cfg.b": 2}]) == ["b"]


def test_ties_go_to_the_earlier_epoch_and_nan_is_ignored(tmp_path):
    for rid, values in {"r-late": [0.5, 0.9, 0.9], "r-early": [0.9, float("nan"), 0.8], "r-none": [float("nan")],
                        "r-low": [0.1, 0.2]}.items():
        with MetricWriter(tmp_path / "runs" / rid, rid) as w:
            for epoch, v in enumerate(values):
                w.log("val", "acc1", v, epoch=epoch, step=10 * (epoch + 1))
    board = A.leaderboard(A.load_runs(tmp_path))
    assert board["run_id"].to_pylist() == ["r-early", "r-late", "r-low", "r-none"]
    assert board["best"].to_pylist() == [0.9, 0.9, 0.2, None]
    assert board["best_epoch"].to_pylist() == [1, 2, 2, None]  # from 1, as the logs count (Parquet: 0, 1, 1)
    assert board["status"].to_pylist() == ["NEW"] * 4  # metrics only: no run.json, no marker


# ------------------------------------------------------------------ CLI


def cli_main(argv) -> int:
    """jobs/analyze.py's main() in this process (saves a second of imports per call)."""
    spec = importlib.util.spec_from_file_location("analyze_cli", ANALYZE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = warnings.formatwarning  # main() shortens warnings for its terminal; keep ours
    try:
        return module.main([str(a) for a in argv])
    finally:
        warnings.formatwarning = saved


def test_cli_help_and_missing_root(tmp_path):
    proc = run_cmd([PY, ANALYZE, "--help"])
    assert "examples:" in proc.stdout and "--plot-top N" in proc.stdout and "--heatmap KEY_X KEY_Y" in proc.stdout
    assert "top --plot-top runs only (default 20)" in " ".join(proc.stdout.split())
    proc = run_cmd([PY, ANALYZE, tmp_path / "missing"], check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"analyze.py: error: no such run root: {tmp_path / 'missing'}"]


def test_cli_usage_errors(synthetic, capsys):
    assert cli_main([synthetic, "--sweep", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"analyze.py: error: no runs of sweep 'nope' under {synthetic} (sweeps there: syn)"]
    assert cli_main([synthetic, "--heatmap", "optim.name", "optim.lr"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "analyze.py: error: optim.name not varied in these runs (varied: model.depth, optim.lr)"]
    assert cli_main([synthetic, "--metric", "val/acc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("analyze.py: error: no run logged 'val/acc' (split/metric; logged: test/acc1, test/f1, ")
    assert "val/acc1, val/acc5," in err and "acc_class" not in err and len(err.splitlines()) == 1
    assert cli_main([synthetic, "--metric", "val/f1", "--heatmap", "cfg.model.depth", "optim.lr", "--no-plots"]) == 0
    assert capsys.readouterr().out.startswith(f"{synthetic}: 20 runs")
    empty = synthetic / "empty"
    empty.mkdir()
    assert cli_main([empty]) == 2
    assert capsys.readouterr().err.splitlines() == [f"analyze.py: error: no runs under {empty}"]


def test_cli_no_plots_prints_the_leaderboard(synthetic):
    proc = run_cmd([PY, ANALYZE, synthetic, "--no-plots", "--rows", "3"])
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"{synthetic}: 20 runs (10 DONE, 5 PRUNED, 3 INCOMPLETE, 2 FAILED); "
                        "varied: model.depth, optim.lr")
    assert "... 17 more in leaderboard.csv" in proc.stdout
    assert (synthetic / "analysis" / "report.md").is_file()
