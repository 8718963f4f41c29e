"""The studies' reported numbers (jobs/studies/*.yaml), imgtrain.studies.reference and jobs/analyze.py --study."""
import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgtrain.studies import reference as S  # noqa: E402
from imgtrain.logs import MetricWriter, end_attempt, mark_done, start_attempt, write_summary  # noqa: E402

DIGEST = Path("/work/shared/studies/README.md")  # outside the repository: the cross-check skips without it
PY = sys.executable


def test_all_five_studies_load_and_every_printed_value_is_its_number():
    studies = S.load_all()
    assert [s.id for s in studies] == ["S000", "S001", "S002", "S003", "S004"]
    counts = {s.id: sum(len(x.numbers) for x in s.experiments) for s in studies}
    s004 = studies[4]
    # 27 MLP cells x 5 numbers, 9 dropout runs x 5, 9 early-stopping runs x 6, 6 CNN/transfer models
    assert sum(1 for x in s004.experiments if x.group == "mlp") == 27
    assert sum(1 for x in s004.experiments if x.group == "mlp_dropout") == 9
    assert sum(1 for x in s004.experiments if x.group == "mlp_early_stopping") == 9
    assert counts["S004"] == 27 * 5 + 9 * 5 + 9 * 6 + 26
    for s in studies:
        for x in s.experiments:
            for n in x.numbers:
                plain = re.fullmatch(r"(\d+(?:[.,]\d+)?) ?%?", n.printed)
                # "0,5414" -> 0.5414, "77,4%" -> 77.4 (thousands commas, 16:41, 1385/1500 aside)
                if plain and n.metric != "params":
                    assert n.value == pytest.approx(float(plain.group(1).replace(",", "."))), (s.id, x.id, n.printed)
                if n.unit == "%":
                    assert n.scaled() == pytest.approx(n.value / 100)
    # the study's val is our test in S004; S001's validation is our val (the fixed 1,500 list)
    x = next(x for x in s004.experiments if x.id == "mlp_sgd_relu_1")
    val = [n for n in x.numbers if n.split == "val"]
    assert {n.our_split for n in val} == {"test"} and val[0].printed == "0,5414" and val[0].value == 0.5414
    s001 = studies[1]
    assert {n.our_split for x in s001.experiments for n in x.numbers if n.split == "validation"} == {"val"}
    # a document contradicting itself: both values kept
    bow = next(x for x in s001.experiments if x.id == "bow_sift_v100_linear")
    assert [n.printed for n in bow.numbers if n.split == "validation"] == ["0.46", "0.47"]
    assert all("1000-way" in (n.notes or "") for x in studies[2].experiments if x.group in ("as_is", "optimal")
               for n in x.numbers if n.metric in ("acc1", "acc5"))


@pytest.mark.skipif(not DIGEST.is_file(), reason=f"the studies digest {DIGEST} is not on this machine")
def test_numbers_match_the_studies_digest():
    text = DIGEST.read_text()
    # every printed value is in the digest verbatim (three come from the original documents' wording)
    not_in_digest = {"12 días", "0.7118", "100.00%"}
    for s in S.load_all():
        for x in s.experiments:
            for n in x.numbers:
                assert n.printed in text or n.printed in not_in_digest, (s.id, x.id, n.printed)
    # S004's tables cell by cell: the right value in the right experiment and column
    s004 = {x.id: x for x in S.load_study("S004").experiments}

    def printed(xid):
        return [n.printed for n in s004[xid].numbers]

    grid = re.findall(r"^\| (SGD|Adam|RMSProp) \+ (ReLU|Tanh|Sigmoid) \| (.+?) \| (.+?) \| (.+?) \|$", text, re.M)
    assert len(grid) == 8  # RMSProp + Sigmoid is printed "same as Adam + Sigmoid"
    for opt, act, *cells in grid:
        for depth, cell in enumerate(cells, 1):
            assert printed(f"mlp_{opt.lower()}_{act.lower()}_{depth}") == cell.split("; "), (opt, act, depth)
            if opt == "Adam" and act == "Sigmoid":
                assert printed(f"mlp_rmsprop_sigmoid_{depth}") == cell.split("; ")
    reg = re.findall(r"^\| (SGD|Adam|RMSProp) (ReLU|Tanh|Sigmoid) (\d) \| (.+?) \| (.+?) \|$", text, re.M)
    assert len(reg) == 9
    for opt, act, depth, drop, es in reg:
        cell = f"{opt.lower()}_{act.lower()}_{depth}"
        assert printed(f"mlp_dropout_{cell}") == drop.split("; ")
        assert printed(f"mlp_early_stopping_{cell}") == es.split("; ")
    transfer = re.findall(r"(0\.\d{4}); (\d\.\d{4}); ([\d:]+)(?: min)? \((\d+)", text)
    want = [p for xid in ("cnn_base", "cnn_improved", "resnet50_base", "resnet50_improved", "vgg16_base",
                          "vgg16_improved") for p in printed(xid)[:4]]
    assert [p for row in transfer for p in row] == want


def test_bad_study_file_names_file_and_line(tmp_path):
    good = (ROOT / "jobs/studies/S003.yaml").read_text()
    bad = tmp_path / "S003.yaml"
    lines = good.splitlines()
    i = next(k for k, line in enumerate(lines) if 'printed: "68.93%"' in line)
    bad.write_text("\n".join(lines[:i] + [lines[i].replace('printed: "68.93%"', 'printed: "68.93%')] + lines[i + 1:]))
    with pytest.raises(S.StudyError, match=rf"{re.escape(str(bad))}:{i + 1}: invalid YAML"):
        S.load_study(bad)
    # a number without its value: the number's line
    bad.write_text("\n".join(lines[:i] + [re.sub(r", value: [\d.]+", "", lines[i])] + lines[i + 1:]))
    with pytest.raises(S.StudyError, match=rf"{re.escape(str(bad))}:{i + 1}: number: missing key value"):
        S.load_study(bad)
    # an unknown key, an unquoted printed value, an unknown recipe
    bad.write_text("\n".join(lines[:i] + [lines[i].replace("at: 1", "epoch: 1")] + lines[i + 1:]))
    with pytest.raises(S.StudyError, match=rf":{i + 1}: number: unknown key 'epoch'"):
        S.load_study(bad)
    bad.write_text(good.replace('printed: "1.7959"', "printed: 1.7959"))
    with pytest.raises(S.StudyError, match=r"S003.yaml:\d+: printed: the value as printed, quoted"):
        S.load_study(bad)
    bad.write_text(good.replace("recipe: tinyimagenet", "recipe: tiny"))
    with pytest.raises(S.StudyError, match=r"S003.yaml:\d+: experiment tinyimagenet: unknown recipe 'tiny'"):
        S.load_study(bad)


def test_unknown_study_lists_the_known_ones(tmp_path):
    with pytest.raises(S.StudyError, match="unknown study 'S9'; known studies: S000, S001, S002, S003, S004"):
        S.load_study("S9")
    r = subprocess.run([PY, ROOT / "jobs/analyze.py", tmp_path, "--study", "S9"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown study 'S9'; known studies: S000, S001, S002, S003, S004" in r.stderr


# ------------------------------------------------------------------ end to end, runs written by imgtrain.logs

def make_run(root: Path, run_id: str, config: dict, rows: list[tuple], summary: dict, sweep=None) -> None:
    """A finished run directory written the way the trainer writes one: run.json, Parquet metric parts,
    summary.parquet with the config's cfg.* columns, DONE. rows: (split, metric, value, epoch)."""
    rdir = root / "runs" / run_id
    attempt = start_attempt(rdir, run_id=run_id, sweep=sweep)
    with MetricWriter(rdir, run_id, sweep, attempt) as w:
        for step, (split, metric, value, epoch) in enumerate(rows):
            w.log(split, metric, value, epoch=epoch, step=step)
    write_summary(rdir, {"run_id": run_id, "sweep": sweep, "status": "DONE", **summary}, config=config)
    end_attempt(rdir, attempt, status="done", exit_code=0)
    mark_done(rdir)


def s004_cfg(opt, act, depth, sweep="s004_mlp"):
    return {"name": "s004_mlp", "data": {"val_split": "test", "test_split": "test"},
            "model": {"name": "mlp", "activation": act, "depth": depth}, "optim": {"name": opt},
            "output": {"sweep": sweep}}


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("studies") / "root"
    # S004 grid cell SGD + ReLU, 1 layer: the test data logged per epoch as "val" (data.val_split=test)
    make_run(root, "s004_mlp-0001", s004_cfg("sgd", "relu", 1), [
        ("train", "epoch_loss", 1.50, 0), ("val", "acc1", 0.40, 0), ("val", "loss", 1.60, 0),
        ("train", "epoch_loss", 1.30, 1), ("val", "acc1", 0.55, 1), ("val", "loss", 1.35, 1),
        ("test", "acc1", 0.56, 1), ("test", "loss", 1.30, 1)],
        {"monitor": "val/acc1", "best": 0.55, "best_epoch": 1, "epochs": 2, "wall_s": 120.0}, sweep="s004_mlp")
    # not S004's cells: another sweep with the same cell, and the S004 sweep's tanh cell
    make_run(root, "other-0001", s004_cfg("sgd", "relu", 1, "other"), [("val", "acc1", 0.9, 0)],
             {"monitor": "val/acc1", "best": 0.9, "best_epoch": 0, "epochs": 1, "wall_s": 1.0}, sweep="other")
    make_run(root, "s004_mlp-0002", s004_cfg("sgd", "tanh", 1), [("val", "acc1", 0.45, 0)],
             {"monitor": "val/acc1", "best": 0.45, "best_epoch": 0, "epochs": 1, "wall_s": 1.0}, sweep="s004_mlp")
    # the CNN base recipe (a plain config run): test data only in the "test" rows
    make_run(root, "s004_cnn_base-abc", {"name": "s004_cnn_base", "data": {"val_split": "val", "test_split": "test"}},
             [("val", "acc1", 0.50, 0), ("test", "acc1", 0.60, 0), ("test", "loss", 2.0, 0)],
             {"monitor": "val/acc1", "best": 0.5, "best_epoch": 0, "epochs": 1, "wall_s": 600.0})
    return root


def rows_of(path: Path) -> dict[tuple, dict]:
    with open(path, newline="") as f:
        return {(r["experiment"], r["study_metric"] or r["metric"], r["at"]): r for r in csv.DictReader(f)}


def test_analyze_study_writes_csv_plots_and_lists_missing(study_root, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([PY, ROOT / "jobs/analyze.py", study_root, "--study", "S004", "--out", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = rows_of(out / "S004.csv")
    assert len(rows) == 260
    va = rows[("mlp_sgd_relu_1", "val_accuracy", "final")]
    assert (va["printed"], float(va["study"]), va["run_id"]) == ("0,5414", 0.5414, "s004_mlp-0001")
    assert float(va["ours"]) == 0.55  # the last epoch's val rows hold the test data (not best.pt's 0.56)
    assert float(va["difference"]) == pytest.approx(0.55 - 0.5414)
    assert va["source"] == "val/acc1 epoch 2"
    vl = rows[("mlp_sgd_relu_1", "val_loss", "final")]
    assert float(vl["ours"]) == 1.35 and float(vl["difference"]) == pytest.approx(1.35 - 1.3416)
    assert float(rows[("mlp_sgd_relu_1", "loss", "final")]["ours"]) == 1.30  # Keras's train loss: epoch_loss
    acc = rows[("mlp_sgd_relu_1", "accuracy", "final")]
    assert acc["ours"] == "" and acc["source"] == "train/acc1 not logged"
    t = rows[("mlp_sgd_relu_1", "tiempo", "final")]
    assert t["ours"] == "" and t["difference"] == "" and t["source"].startswith("not compared")
    # the tanh cell has its own run; the other sweep's run matches nothing
    assert float(rows[("mlp_sgd_tanh_1", "val_accuracy", "final")]["ours"]) == 0.45
    assert "other-0001" not in {r["run_id"] for r in rows.values()}
    assert rows[("mlp_adam_relu_1", "val_accuracy", "final")]["run_id"] == ""
    # plain config run: the test data is only in the test rows; its minutes from wall_s
    cnn = rows[("cnn_base", "Val-Acc", "final")]
    assert (float(cnn["ours"]), cnn["source"]) == (0.60, "test/acc1 epoch 1 (best.pt)")
    tm = rows[("cnn_base", "Tiempo (mins)", "final")]
    assert float(tm["ours"]) == 10.0 and float(tm["difference"]) == pytest.approx(10.0 - 16.683333)
    assert float(rows[("cnn_base", "Épocas", "final")]["ours"]) == 1.0
    # plots for the groups with a run, the table, the experiments without one
    assert sorted(p.name for p in out.glob("*.png")) == ["S004_cnn.png", "S004_mlp.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out.glob("*.png"))
    assert "| mlp_sgd_relu_1 | acc1 | val | test | final | 0,5414 | 0.5414 | 0.55 |" in r.stdout
    assert "no run yet (48 experiments):" in r.stdout
    assert "  mlp_adam_relu_1: grid jobs/grids/s004_mlp.yaml cell {optim.name: adam, model.activation: relu, " \
           "model.depth: 1}" in r.stdout
    assert "  mlp_sgd_relu_1:" not in r.stdout and "  cnn_base:" not in r.stdout


def test_epoch_and_best_epoch_numbers(tmp_path):
    """`at: N` reads epoch N (1-based); `at: best` the run's best epoch (summary best_epoch)."""
    make_run(tmp_path, "s003_tinyimagenet-x", {"name": "s003_tinyimagenet"}, [
        ("train", "epoch_loss", 1.9, 0), ("val", "acc1", 0.60, 0),
        ("train", "epoch_loss", 1.2, 1), ("val", "acc1", 0.70, 1),
        ("train", "epoch_loss", 1.0, 2), ("val", "acc1", 0.65, 2)],
        {"monitor": "val/acc1", "best": 0.70, "best_epoch": 1, "epochs": 3, "wall_s": 10.0})
    cmp = S.compare(S.load_study("S003"), tmp_path)
    got = {(r["metric"], r["at"]): r for r in cmp.rows if r["experiment"] == "tinyimagenet"}
    assert got[("epoch_loss", 1)]["ours"] == 1.9 and got[("epoch_loss", 2)]["ours"] == 1.2
    assert got[("acc1", 1)]["ours"] == 0.60 and got[("acc1", 2)]["ours"] == 0.70
    assert got[("acc1", 1)]["study"] == pytest.approx(0.6893)  # 68.93% as a fraction
    assert got[("acc1", 1)]["difference"] == pytest.approx(0.60 - 0.6893)
    x = next(x for x in S.load_study("S003").experiments if x.id == "tinyimagenet")
    best = S.Number("acc1", "validation", "val", "70%", 70.0, unit="%", at="best")
    from imgtrain import analysis
    runs = analysis.load_runs(tmp_path)
    (run,) = S.runs_of(x, runs.runs)
    assert S.our_value(best, run, runs) == (0.70, "val/acc1 epoch 2 (best)")
    assert {e.id for e in cmp.no_run} == {"text_notext", "text_notext_balanced", "text_notext_imagenet_norm"}
