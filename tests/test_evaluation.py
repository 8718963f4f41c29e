"""jobs/evaluate.py, extract.py and svm.py on a tiny digits run trained once for the module.

Results are checked against what they must equal: the run's own test_results.json, the shards read with
tarfile, the same images packed as another data set, a second process count, and relations between
layers (pre_logits = relu(layers.0.0), the head's output = the evaluated logits).
"""
import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import PY, ROOT, run_cmd, train_cmd
from imgtrain.logs import read_metrics, read_summaries

CFG = ROOT / "tests/configs/tiny_digits.yaml"


def torchrun(script, *args):
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", ROOT / "jobs" / script, *args]


def cli(name):
    """main() of jobs/<name>.py, called in this process (no interpreter and torch start-up)."""
    spec = importlib.util.spec_from_file_location(f"cli_{name}", ROOT / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def shard_samples(root: Path, split: str) -> list[tuple[str, dict]]:
    """(key, {ext: bytes}) of a split in manifest order, read straight from the tar files."""
    manifest = json.loads((root / "manifest.json").read_text())
    out = []
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(root / shard["file"]) as tar:
            members: dict[str, dict] = {}
            for m in tar:
                folder, _, base = m.name.rpartition("/")
                key, _, ext = base.partition(".")  # WebDataset: the extension starts at the first dot
                key = f"{folder}/{key}" if folder else key
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
            out += list(members.items())
    return out


def write_digit_folder(digits: Path, dst: Path, classes=None, n_train: int = 2) -> Path:
    """The digits test images (byte for byte) as an imagefolder tree, plus a few train images."""
    for split, limit in (("train", n_train), ("test", None)):
        seen: dict[str, int] = {}
        for key, mem in shard_samples(digits, split):
            c = mem["cls"].decode()
            if (classes and c not in classes) or (limit and seen.get(c, 0) >= limit):
                continue
            seen[c] = seen.get(c, 0) + 1
            (dst / split / c).mkdir(parents=True, exist_ok=True)
            (dst / split / c / f"{key}.png").write_bytes(mem["png"])
    return dst


def pack_folder(src: Path, out: Path) -> Path:
    run_cmd([PY, "-m", "shards", "pack", "imagefolder", src, out, "--val-fraction", "0"])
    return out


def one_line_error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [e for e in err if e.startswith(prefix)]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def run(digits_shards, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalruns")
    run_cmd(train_cmd(CFG, f"data.path={digits_shards}", f"output.root={root}", "output.run=tiny", "trainer.epochs=1"))
    return root / "runs" / "tiny"


@pytest.fixture(scope="module")
def evaluated(run):
    proc = run_cmd([PY, ROOT / "jobs/evaluate.py", run])
    return run / "eval" / "digits-test-best", proc


# ------------------------------------------------------------------------------------------ fast

def test_help_of_each_script():
    for script, words in (("evaluate.py", ["--class-map", "--checkpoint", "examples:"]),
                          ("extract.py", ["--list-layers", "pre_logits", "examples:"]),
                          ("svm.py", ["--gamma", "one-vs-rest", "examples:"])):
        proc = run_cmd([PY, ROOT / "jobs" / script, "--help"])
        assert proc.stdout.startswith("usage:") and all(w in proc.stdout for w in words), (script, proc.stdout)


@pytest.mark.slow  # the first in-process call imports torch, timm and scikit-learn
def test_bad_run_dir_and_features_dir_are_one_line_errors(tmp_path, capsys):
    assert cli("evaluate")([str(tmp_path / "nope")]) == 2
    msg = one_line_error(capsys, "evaluate.py: error:")
    assert "RUN_DIR" in msg and "does not exist" in msg
    assert cli("evaluate")([str(tmp_path)]) == 2
    assert "is not a run directory (no config.yaml)" in one_line_error(capsys, "evaluate.py: error:")
    assert cli("extract")([str(tmp_path), "--layer", "head"]) == 2
    assert "is not a run directory" in one_line_error(capsys, "extract.py: error:")
    assert cli("svm")([str(tmp_path)]) == 2
    assert "holds no manifest.json" in one_line_error(capsys, "svm.py: error:")


def test_imagenet_class_maps_by_wnid_or_name(tmp_path):
    from types import SimpleNamespace
    from imgtrain.evaluation import EvalError, resolve_class_map
    from imgtrain.evaluation.classmap import _imagenet_map
    idx, names = _imagenet_map(["n01440764", "Goldfish", "great_white_shark"])
    assert idx == [0, 1, 2] and len(names) == 1000 and names[1] == "goldfish"
    with pytest.raises(EvalError, match="no ImageNet-1k wnid or name: 'clip art dog'"):
        _imagenet_map(["clip art dog", "goldfish"])

    def pretrained_head():  # what load_model returns for a 1000-way head of unknown class names
        info = SimpleNamespace(class_names=["dog", "fish", "shark"], task="classification", root="clipart")
        return SimpleNamespace(info=info, num_outputs=1000, output_names=None, notes=[], class_map=None)
    (tmp_path / "map.json").write_text(json.dumps({"dog": "golden retriever", "fish": 1, "shark": "n01484850"}))
    loaded = resolve_class_map(pretrained_head(), str(tmp_path / "map.json"))
    assert loaded.class_map.tolist() == [207, 1, 2] and loaded.output_names[207] == "golden retriever"
    with pytest.raises(EvalError, match="1000 outputs but data set clipart has 3 classes.*--class-map"):
        resolve_class_map(pretrained_head(), None)
    (tmp_path / "dup.json").write_text(json.dumps([1, 1, 2]))
    with pytest.raises(EvalError, match="same output"):
        resolve_class_map(pretrained_head(), str(tmp_path / "dup.json"))


# ------------------------------------------------------------------------------------------ evaluate

@pytest.mark.slow
def test_evaluate_reproduces_the_runs_test_metrics(run, evaluated, digits_shards):
    out, proc = evaluated
    expected = json.loads((run / "test_results.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got["metrics"]["acc1"] == expected["metrics"]["acc1"] > 0.5
    assert got["metrics"]["loss"] == pytest.approx(expected["metrics"]["loss"], rel=1e-6)
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    assert got["weights"] == "model" and got["checkpoint"].endswith("best.pt") and got["metrics"]["samples"] == 359
    assert f"test: loss {expected['metrics']['loss']:.4f} acc1 {expected['metrics']['acc1']:.4f}" in proc.stdout
    # per-class table: top-1 equals the task's acc_class, top-5 >= top-1; precision/recall/F1 are scikit-learn's
    # per-class report of the predictions, and their means the run's macro precision/recall/f1
    from sklearn.metrics import precision_recall_fscore_support
    preds = pq.read_table(out / "predictions.parquet")
    p, r, f, _ = precision_recall_fscore_support(preds["label"].to_numpy(), preds["pred"].to_numpy(),
                                                 labels=list(range(10)), zero_division=0)
    for row in got["per_class"]:
        assert row["top1"] == pytest.approx(expected["metrics"][f"acc_class/{row['class']}"])
        assert row["top5"] >= row["top1"] and row["samples"] == sum(expected["confusion_matrix"][row["class"]])
        i = row["class"]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
    for k, v in (("precision", p), ("recall", r), ("f1", f)):
        assert np.mean(v) == pytest.approx(expected["metrics"][k])
    assert "precision" in (out / "per_class.csv").read_text().splitlines()[0]

    with Image.open(out / "confusion_matrix.png") as im:
        assert im.format == "PNG" and min(im.size) > 300

    table = pq.read_table(out / "predictions.parquet")
    samples = shard_samples(digits_shards, "test")
    assert table.num_rows == len(samples) == 359
    assert table["index"].to_pylist() == list(range(359))
    assert table["key"].to_pylist() == [k for k, _ in samples]
    assert table["label"].to_pylist() == [int(m["cls"]) for _, m in samples]
    for i in (0, 100, 358):  # and the json member agrees
        assert json.loads(samples[i][1]["json"])["id"] == table["key"][i].as_py()
    pred, label = table["pred"].to_numpy(), table["label"].to_numpy()
    assert (table["correct"].to_numpy() == (pred == label)).all()
    assert table["correct"].to_numpy().mean() == pytest.approx(expected["metrics"]["acc1"])
    top5 = np.stack(table["top5"].to_numpy(zero_copy_only=False))
    probs = np.stack(table["top5_prob"].to_numpy(zero_copy_only=False))
    assert (top5[:, 0] == pred).all() and (np.diff(probs, axis=1) <= 0).all() and (probs.sum(1) <= 1 + 1e-5).all()
    in_top5 = (top5 == label[:, None]).any(1).mean()
    assert in_top5 == pytest.approx(expected["metrics"]["acc5"])
    assert np.mean(table["loss"].to_numpy()) == pytest.approx(expected["metrics"]["loss"], rel=1e-4)


@pytest.mark.multiproc
@pytest.mark.slow
def test_evaluate_under_torchrun_gives_the_same_results(run, evaluated, tmp_path):
    out, _ = evaluated
    run_cmd(torchrun("evaluate.py", run, "--out", tmp_path / "ddp"))
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "ddp"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    for k in ("acc1", "acc5", "f1", "samples"):
        assert one["metrics"][k] == two["metrics"][k], k
    assert one["metrics"]["loss"] == pytest.approx(two["metrics"]["loss"], rel=1e-6)
    a, b = (pq.read_table(d / "predictions.parquet") for d in (out, tmp_path / "ddp"))
    for col in ("key", "index", "label", "pred"):
        assert a[col].to_pylist() == b[col].to_pylist(), col


@pytest.mark.slow
def test_evaluate_on_another_data_set_and_class_maps(run, evaluated, digits_shards, tmp_path, capsys):
    """The same test images packed as an imagefolder (10 classes): same metrics, because the model keeps
    its training normalisation; a 3-class subset needs a class map, then full/acc1 is the run's own
    accuracy on those images."""
    evaluate = cli("evaluate")
    other = pack_folder(write_digit_folder(digits_shards, tmp_path / "src10"), tmp_path / "folder10")
    assert evaluate([str(run), "--data", str(other), "--out", str(tmp_path / "e10")]) == 0
    own = json.loads((evaluated[0] / "metrics.json").read_text())
    got = json.loads((tmp_path / "e10/metrics.json").read_text())
    assert got["data"] == str(other) and got["metrics"]["acc1"] == own["metrics"]["acc1"]
    assert got["mean"] == own["mean"]  # the training set's statistics, not the new set's
    assert json.loads((other / "manifest.json").read_text())["image_stats"]["mean"][0] != got["mean"][0]
    table = pq.read_table(tmp_path / "e10/predictions.parquet")
    folder = shard_samples(other, "test")
    assert table["key"].to_pylist() == [k for k, _ in folder]
    assert table["label"].to_pylist() == [int(m["cls"]) for _, m in folder]

    sub = pack_folder(write_digit_folder(digits_shards, tmp_path / "src3", classes=("3", "5", "8")), tmp_path / "f3")
    capsys.readouterr()
    assert evaluate([str(run), "--data", str(sub)]) == 2
    msg = one_line_error(capsys, "evaluate.py: error:")
    assert "10 outputs" in msg and "3 classes" in msg and "--class-map" in msg
    assert evaluate([str(run), "--data", str(sub), "--class-map", "names", "--out", str(tmp_path / "e3")]) == 0
    got = json.loads((tmp_path / "e3/metrics.json").read_text())
    assert got["class_map"] == [3, 5, 8] and got["confusion_matrix"] != [] and len(got["confusion_matrix"]) == 3
    ref = pq.read_table(evaluated[0] / "predictions.parquet").to_pydict()
    mine = [c for c, lab in zip(ref["correct"], ref["label"]) if lab in (3, 5, 8)]
    assert got["metrics"]["samples"] == len(mine)
    assert got["metrics"]["full/acc1"] == pytest.approx(np.mean(mine))
    assert got["metrics"]["acc1"] >= got["metrics"]["full/acc1"]  # 3-way is easier than 10-way
    rows = pq.read_table(tmp_path / "e3/predictions.parquet")
    assert set(rows["label_name"].to_pylist()) == {"3", "5", "8"} and "model_top5_name" in rows.column_names
    (tmp_path / "map.json").write_text(json.dumps({"3": 3, "5": "5", "8": 8}))
    assert evaluate([str(run), "--data", str(sub), "--class-map", str(tmp_path / "map.json"),
                     "--out", str(tmp_path / "e3j")]) == 0
    assert json.loads((tmp_path / "e3j/metrics.json").read_text())["metrics"] == got["metrics"]


@pytest.mark.slow
def test_evaluate_uses_the_ema_weights_of_a_checkpoint_and_last(run, evaluated, tmp_path):
    """A checkpoint with EMA weights is evaluated with them (as the trainer's test does): here an EMA
    whose head always says 0, so top-1 is the share of zeros."""
    ckpt = torch.load(run / "checkpoints/best.pt", map_location="cpu", weights_only=True)
    ema = {k: v.clone() for k, v in ckpt["model"].items()}
    ema["head.bias"][0] += 1e4
    torch.save({**ckpt, "ema": ema}, tmp_path / "ema.pt")
    evaluate = cli("evaluate")
    assert evaluate([str(run), "--checkpoint", str(tmp_path / "ema.pt"), "--out", str(tmp_path / "ema")]) == 0
    got = json.loads((tmp_path / "ema/metrics.json").read_text())
    zeros = np.mean(np.array(pq.read_table(evaluated[0] / "predictions.parquet")["label"]) == 0)
    assert got["weights"] == "ema" and got["metrics"]["acc1"] == pytest.approx(zeros)
    assert evaluate([str(run), "--checkpoint", "last", "--out", str(tmp_path / "last")]) == 0
    got = json.loads((tmp_path / "last/metrics.json").read_text())
    assert got["checkpoint"].endswith("last.pt") and got["weights"] == "model" and got["metrics"]["samples"] == 359


@pytest.mark.slow
def test_evaluate_with_a_config_and_a_weights_file(run, evaluated, digits_shards, tmp_path, capsys):
    """No run directory: a config plus a checkpoint, or plus model.pretrained_path (a plain safetensors
    file, normalised as given); a file without a classifier is refused for evaluation."""
    from safetensors.torch import save_file
    evaluate = cli("evaluate")
    own = json.loads((evaluated[0] / "metrics.json").read_text())
    assert evaluate(["--config", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoints/best.pt"),
                     "--out", str(tmp_path / "c1")]) == 0
    assert json.loads((tmp_path / "c1/metrics.json").read_text())["metrics"]["acc1"] == own["metrics"]["acc1"]

    sd = torch.load(run / "checkpoints/best.pt", map_location="cpu", weights_only=True)["model"]
    save_file(sd, tmp_path / "w.safetensors")
    norm = [f"data.mean={own['mean']}", f"data.std={own['std']}"]
    common = ["--config", str(CFG), f"data.path={digits_shards}", *norm]
    weights = f"model.pretrained_path={tmp_path / 'w.safetensors'}"
    assert evaluate([*common, weights, "--out", str(tmp_path / "c2")]) == 0
    got = json.loads((tmp_path / "c2/metrics.json").read_text())
    assert got["weights"] == "pretrained" and got["model_outputs"] == 10
    assert got["metrics"]["acc1"] == own["metrics"]["acc1"]

    save_file({k: v for k, v in sd.items() if not k.startswith("head.")}, tmp_path / "backbone.safetensors")
    capsys.readouterr()
    assert evaluate([*common, "--checkpoint", str(tmp_path / "backbone.safetensors")]) == 2
    assert "holds no classifier" in one_line_error(capsys, "evaluate.py: error:")
    assert evaluate(["--config", str(CFG), f"data.path={digits_shards}"]) == 2
    assert "no weights" in one_line_error(capsys, "evaluate.py: error:")


@pytest.mark.slow
def test_evaluate_score_distributions(tmp_path):
    """AVA-format data and a weights file: per-image true/predicted mean scores and distributions."""
    from safetensors.torch import save_file
    from sourcedata import write_ava

    from imgtrain.config import ModelConfig
    from imgtrain.models import create_model
    ava = write_ava(tmp_path / "src", n=16)
    run_cmd([PY, "-m", "shards", "pack", "ava", ava.root, tmp_path / "ava", "--test-fraction", "0.5"])
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="mlp", depth=1, width=[64]), num_classes=10, in_chans=3, img_size=16)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    assert cli("evaluate")(["--config", str(CFG), f"data.path={tmp_path / 'ava'}", "task.name=score_distribution",
                            "task.loss=emd", f"model.pretrained_path={tmp_path / 'w.safetensors'}",
                            "--out", str(tmp_path / "out")]) == 0
    got = json.loads((tmp_path / "out/metrics.json").read_text())
    table = pq.read_table(tmp_path / "out/predictions.parquet").to_pydict()
    assert len(table["key"]) == got["metrics"]["samples"] == 8
    for key, true_mean, dist in zip(table["key"], table["true_mean"], table["true_dist"]):
        votes = np.array(ava.votes[key], dtype=float)
        assert true_mean == pytest.approx((votes * np.arange(1, 11)).sum() / votes.sum())
        np.testing.assert_allclose(dist, votes / votes.sum(), rtol=1e-6)
    assert np.mean(table["emd"]) == pytest.approx(got["metrics"]["emd"])
    assert np.mean(np.abs(np.array(table["pred_dist"]) - np.array(table["true_dist"]))) == \
        pytest.approx(got["metrics"]["mae"], rel=1e-5)
    with Image.open(tmp_path / "out/scores.png") as im:
        assert im.format == "PNG"


# ------------------------------------------------------------------------------------------ features

@pytest.mark.multiproc
@pytest.mark.slow
def test_extract_named_layer_same_files_with_one_and_two_processes(run, evaluated, tmp_path):
    # the run's OMP_NUM_THREADS=1 (run_cmd, torchrun) keeps float results bit-identical across process counts
    args = ["--layer", "head", "--split", "test", "--format", "npy", "--shard-size", "100"]
    proc = run_cmd([PY, ROOT / "jobs/extract.py", run, *args, "--out", tmp_path / "one"])
    assert "359 x 10 features" in proc.stdout
    run_cmd(torchrun("extract.py", run, *args, "--out", tmp_path / "two"))
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert [f for f in files if f.startswith("features-")] == [f"features-0000{i}.npy" for i in range(4)]
    for name in files:
        if name != "manifest.json":
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    m1, m2 = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert (m1["world_size"], m2["world_size"]) == (1, 2) and m1["shards"] == m2["shards"] and m1["count"] == 359

    from imgtrain.studies.features import load_features
    feats = load_features(tmp_path / "two")
    assert feats.X.shape == (359, 10) and feats.X.dtype == np.float32
    pred = pq.read_table(evaluated[0] / "predictions.parquet")
    assert feats.index.tolist() == list(range(359)) and feats.keys.tolist() == pred["key"].to_pylist()
    assert feats.y.tolist() == pred["label"].to_pylist()
    assert (feats.X.argmax(1) == pred["pred"].to_numpy()).all()  # the head's output is the logits


@pytest.fixture(scope="module")
def train_features(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    proc = run_cmd([PY, ROOT / "jobs/extract.py", run, "--layer", "pre_logits", "--split", "train",
                    "--out", out / "train", "--tsne", out / "tsne.png", "--tsne-points", "150"])
    return out, proc


@pytest.mark.slow
def test_extract_pre_logits_parquet_and_tsne(run, train_features, digits_shards, tmp_path, capsys):
    from imgtrain.studies.features import load_features
    out, proc = train_features
    assert "1259 x 64 features" in proc.stdout and "150 of 1259 points" in proc.stdout
    table = pq.read_table(out / "train/features-00000.parquet")
    assert table.column_names == ["key", "index", "label", "feature"] and table.num_rows == 1259
    samples = shard_samples(digits_shards, "train")
    assert table["key"].to_pylist() == [k for k, _ in samples]
    assert table["label"].to_pylist() == [int(m["cls"]) for _, m in samples]
    feats = load_features(out / "train")
    assert feats.X.shape == (1259, 64) and (feats.X >= 0).all() and feats.X.std() > 0  # after the ReLU
    with Image.open(out / "tsne.png") as im:
        assert im.format == "PNG" and min(im.size) > 300

    # pre_logits == relu(layers.0.0), the named Linear layer, on the test split (in process)
    extract = cli("extract")
    for layer in ("pre_logits", "layers.0.0"):
        assert extract([str(run), "--layer", layer, "--split", "test", "--out", str(tmp_path / layer)]) == 0
    pre, lin = load_features(tmp_path / "pre_logits"), load_features(tmp_path / "layers.0.0")
    assert pre.X.shape == lin.X.shape == (359, 64) and (lin.X < 0).any()
    np.testing.assert_allclose(pre.X, np.maximum(lin.X, 0), rtol=1e-5, atol=1e-6)

    capsys.readouterr()
    assert extract([str(run), "--layer", "layers.9"]) == 2
    msg = one_line_error(capsys, "extract.py: error:")
    assert "no layer 'layers.9'" in msg and "--list-layers" in msg
    assert extract([str(run), "--list-layers"]) == 0
    listing = capsys.readouterr().out
    assert "layers.0.0" in listing and "Linear" in listing and "pre_logits" in listing and "[64]" in listing


@pytest.mark.slow
def test_svm_grid_on_digits_features(run, train_features, tmp_path, capsys):
    out, _ = train_features
    assert cli("extract")([str(run), "--layer", "pre_logits", "--split", "test", "--out", str(out / "test")]) == 0
    capsys.readouterr()
    assert cli("svm")([str(out / "train"), "--val", str(out / "test"), "--kernel", "linear", "rbf", "--C", "0.1", "1",
                       "--gamma", "scale", "--cv", "3", "--out", str(tmp_path / "svm"), "--name", "dig"]) == 0
    stdout = capsys.readouterr().out
    assert "| 1 |" in stdout and "held out (359 samples)" in stdout
    rows = (tmp_path / "svm/dig.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("run_id,kernel,C,gamma,cv_acc1")
    metrics = read_metrics(tmp_path / "svm")
    val = {(r["run_id"], r["metric"]): r["value"] for r in metrics.to_pylist() if r["split"] == "val"}
    runs = {r.split(",")[0]: float(r.split(",")[4]) for r in rows[1:]}
    assert set(runs) == {"dig-linear-C0.1", "dig-linear-C1", "dig-rbf-C0.1-gscale", "dig-rbf-C1-gscale"}
    for run_id, acc in runs.items():
        assert val[(run_id, "acc1")] == pytest.approx(acc)
        folds = [r["value"] for r in metrics.to_pylist() if r["run_id"] == run_id and r["split"] == "cv"]
        assert len(folds) == 3 and np.mean(folds) == pytest.approx(acc)
    assert max(runs.values()) > 0.8
    best = max(runs, key=runs.get)
    test = [r for r in metrics.to_pylist() if r["split"] == "test"]
    assert {r["run_id"] for r in test} == {best}
    assert next(r["value"] for r in test if r["metric"] == "acc1") > 0.8
    summaries = read_summaries(tmp_path / "svm").to_pylist()
    assert len(summaries) == 4 and all(s["status"] == "DONE" and s["sweep"] == "dig" for s in summaries)
    assert {s["cfg.svm.kernel"] for s in summaries} == {"linear", "rbf"}
    results = json.loads((tmp_path / "svm/runs" / best / "test_results.json").read_text())
    assert np.array(results["confusion_matrix"]).sum() == 359


# ------------------------------------------------------------------------------------------ SVM as S002 reports it

def write_features(out: Path, X: np.ndarray, y: np.ndarray, class_names, split: str) -> Path:
    """A features directory as extract.py writes it (one parquet shard + manifest.json), from arrays."""
    from imgtrain.studies.features.extract import FORMAT, _write_shard
    out.mkdir(parents=True, exist_ok=True)
    idx = np.arange(len(y))
    files = _write_shard(out, 0, "parquet", X.astype(np.float32), y.astype(np.int64), [f"s{i}" for i in idx], idx)
    manifest = {"format": FORMAT, "layer": "fc7", "pool": "auto", "dim": X.shape[1], "dtype": "float32",
                "file_format": "parquet", "split": split, "count": len(y), "class_names": list(class_names),
                "model": "digits-pixels", "checkpoint": "none",
                "shards": [{"shard": 0, "files": files, "count": len(y), "first": 0, "last": len(y) - 1}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def digit_pixels(tmp_path_factory):
    """scikit-learn's digits as 64-d 'features' (pixel values 0..16, unscaled): 400 train, 200 test."""
    from sklearn.datasets import load_digits
    d = load_digits()
    root = tmp_path_factory.mktemp("pixfeat")
    names = [str(i) for i in range(10)]
    return (write_features(root / "train", d.data[:400], d.target[:400], names, "train"),
            write_features(root / "test", d.data[400:600], d.target[400:600], names, "test"))


def test_class_probabilities_and_score_metrics():
    from imgtrain.studies import features as F

    class Fake:  # decision values of 3 of 6 classes (classes 1, 3, 4 seen in training)
        classes_ = np.array([1, 3, 4])

        def decision_function(self, X):
            return np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])

        def predict_proba(self, X):
            return np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])

    p = F.class_probabilities(Fake(), np.zeros((2, 1)), 6, "decision")
    e = np.exp([2.0, 0.0, -1.0])
    assert p.shape == (2, 6) and np.allclose(p[0, [1, 3, 4]], e / e.sum()) and np.allclose(p[1, [1, 3, 4]], 1 / 3)
    assert np.all(p[:, [0, 2, 5]] == 0)  # classes the SVM never saw
    q = F.class_probabilities(Fake(), np.zeros((2, 1)), 6, "proba")
    assert np.allclose(q[:, [1, 3, 4]], Fake().predict_proba(None))
    m = F.score_metrics(np.array([3, 0]), q)
    assert m["acc1"] == 0.0  # sample 0: top class 1; sample 1: top class 4
    assert m["acc5"] == 1.0  # top-5 of 6 classes holds both true classes (class 0 ranks among the zeros)
    assert m["loss"] == pytest.approx((-np.log(0.2) - np.log(1e-12)) / 2)

    class Binary:
        classes_ = np.array([0, 1])

        def decision_function(self, X):
            return np.array([1.5, -0.5])

    b = F.class_probabilities(Binary(), np.zeros((2, 1)), 2)
    assert np.allclose(b[:, 1], 1 / (1 + np.exp(-np.array([1.5, -0.5]))))  # sigmoid(d)


def test_make_svm_options():
    from imgtrain.studies.features import svm as F
    cell = F.SvmCell("sigmoid", 10.0, 1e-4)
    plain = F.make_svm(cell, "ovr", standardize=False)
    assert [type(s).__name__ for _, s in plain.steps] == ["OneVsRestClassifier"]
    assert plain.steps[-1][1].estimator.get_params()["kernel"] == "sigmoid"
    assert plain.steps[-1][1].estimator.C == 10.0 and plain.steps[-1][1].estimator.gamma == 1e-4
    assert [type(s).__name__ for _, s in F.make_svm(cell).steps] == ["StandardScaler", "OneVsRestClassifier"]
    lin = F.make_svm(F.SvmCell("linear", 1.0), "ovr", scores="proba").steps[-1][1]
    assert type(lin).__name__ == "OneVsRestClassifier" and lin.estimator.probability and lin.estimator.kernel == "linear"
    assert type(F.make_svm(F.SvmCell("linear", 1.0)).steps[-1][1]).__name__ == "LinearSVC"
    with pytest.raises(Exception, match="--scores"):
        F.make_svm(cell, scores="votes")
    svc = F._probability_svc(kernel="rbf", C=1.0)
    assert svc.get_params().get("probability", True)  # SVC(probability=True), or its calibrated replacement


@pytest.mark.filterwarnings("ignore:The `probability` parameter:FutureWarning")
@pytest.mark.parametrize("scores", ["decision", "proba"])
def test_svm_reports_top5_and_cross_entropy(digit_pixels, tmp_path, capsys, scores):
    """S002's two SVMs (RBF C=1 gamma=1e-4, sigmoid C=10 gamma=1e-4, one-vs-rest) on unscaled features."""
    from imgtrain.studies import features as F
    train, test = digit_pixels
    out = tmp_path / "svm"
    assert cli("svm")([str(train), "--val", str(test), "--kernel", "rbf", "sigmoid", "--C", "1", "10", "--gamma",
                       "0.0001", "--no-standardize", "--scores", scores, "--cv", "3", "--out", str(out),
                       "--name", "s2"]) == 0
    stdout = capsys.readouterr().out
    assert f"unscaled features, {scores} scores" in stdout and "| cv acc5 | cv loss |" in stdout
    assert "acc5" in stdout.split("held out (200 samples)")[1]
    header = (out / "s2.csv").read_text().splitlines()[0].split(",")
    assert header[:9] == ["run_id", "kernel", "C", "gamma", "cv_acc1", "cv_acc1_std", "cv_f1", "cv_acc5", "cv_loss"]
    assert {"test_acc1", "test_acc5", "test_loss"} <= set(header)
    metrics = read_metrics(out).to_pylist()
    val = {(r["run_id"], r["metric"]): r["value"] for r in metrics if r["split"] == "val"}
    for run_id in ("s2-rbf-C1-g0.0001", "s2-sigmoid-C10-g0.0001"):
        assert val[(run_id, "acc5")] >= val[(run_id, "acc1")] and val[(run_id, "loss")] > 0
    summaries = {s["run_id"]: s for s in read_summaries(out).to_pylist()}
    best = next(r for r, s in summaries.items() if s.get("test/acc1") is not None)
    s = summaries[best]
    assert s["cfg.svm.standardize"] is False and s["cfg.svm.scores"] == scores and s["cfg.svm.multiclass"] == "ovr"
    assert s["test/acc1"] > 0.8 and s["test/acc5"] >= s["test/acc1"] and 0 < s["test/loss"] < 2.3
    # the logged numbers are what the refit model's probabilities give
    res = json.loads((out / "runs" / best / "test_results.json").read_text())
    assert res["scores"] == scores and len(res["per_class"]) == 10 and sum(c["samples"] for c in res["per_class"]) == 200
    tr, te = F.load_features(train), F.load_features(test)
    model = F.make_svm(F.SvmCell(s["cfg.svm.kernel"], s["cfg.svm.C"], 1e-4), "ovr", 0, standardize=False,
                       scores=scores).fit(tr.X, tr.y)
    probs = F.class_probabilities(model, te.X, 10, scores)
    nll = -np.log(np.maximum(probs[np.arange(200), te.y], 1e-12)).mean()
    assert res["metrics"]["loss"] == pytest.approx(nll, rel=1e-6)
    assert res["metrics"]["acc5"] == pytest.approx(np.mean([t in np.argsort(-p)[:5] for p, t in zip(probs, te.y)]))
    assert np.trace(np.array(res["confusion_matrix"])) / 200 == pytest.approx(res["metrics"]["acc1"])


def test_svm_holdout_split_and_bad_fraction(digit_pixels, tmp_path, capsys):
    train, _ = digit_pixels
    out = tmp_path / "svm"
    assert cli("svm")([str(train), "--kernel", "rbf", "--C", "1", "--gamma", "scale", "--holdout", "0.2",
                       "--out", str(out), "--name", "h"]) == 0
    assert "1 split holding out 0.2" in capsys.readouterr().out
    metrics = read_metrics(out).to_pylist()
    assert len([r for r in metrics if r["split"] == "cv"]) == 1  # one split: one "fold"
    s = read_summaries(out).to_pylist()[0]
    assert s["cfg.svm.holdout"] == 0.2 and s["cfg.svm.cv"] is None and s["cfg.svm.standardize"] is True
    assert cli("svm")([str(train), "--holdout", "1.5", "--out", str(out)]) == 2
    assert "--holdout 1.5" in one_line_error(capsys, "svm.py: error:")
