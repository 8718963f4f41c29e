"""jobs/bow.py (bag-of-visual-words baseline) and jobs/dcgan.py (DCGAN on MNIST-format IDX files or shards).

Data: scikit-learn's real digits (packed at 64 px so SIFT/ORB find keypoints; written as tiny IDX files
for the GAN) and real photo crops (tests/sourcedata.py) with blank images added for the empty-histogram
count. The GAN resume tests compare final weights with an uninterrupted run, bit for bit (CPU).
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from imgtrain.studies import bow, dcgan
from imgtrain.logs import read_metrics, read_run, read_summaries
from conftest import PY, ROOT, run_cmd
from sourcedata import photos, write_imagefolder

BOW = ROOT / "jobs" / "bow.py"
GAN = ROOT / "jobs" / "dcgan.py"


def rows(table, split=None, metric=None):
    mask = None
    for col, value in (("split", split), ("metric", metric)):
        if value is not None:
            m = pc.equal(table[col], value)
            mask = m if mask is None else pc.and_(mask, m)
    return table if mask is None else table.filter(mask)


def values(table, split, metric):
    return rows(table, split, metric)["value"].to_pylist()


# ============================================================================ bag of visual words

@pytest.fixture(scope="module")
def digits64(tmp_path_factory) -> Path:
    """The real digits enlarged to 64 px (at 16 px SIFT finds almost nothing)."""
    out = tmp_path_factory.mktemp("bow") / "digits64"
    run_cmd([PY, "-m", "shards", "pack", "digits", "-", out, "--upscale", "64", "--shard-size", "400"])
    return out


def test_histograms_count_words_normalise_and_leave_empty_images_zero():
    rng = np.random.default_rng(0)
    # two well separated blobs of SIFT-like uint8 descriptors -> a 2-word vocabulary
    a = np.clip(rng.normal(40, 3, (60, 128)), 0, 255).astype(np.uint8)
    b = np.clip(rng.normal(200, 3, (60, 128)), 0, 255).astype(np.uint8)
    vocab = bow.fit_vocabulary([a, b], 2, binary=False, seed=0)
    word_a = int(vocab.predict(a[:1].astype(np.float32))[0])
    images = [a[:3], np.zeros((0, 128), np.uint8), np.concatenate([a[:1], b[:3]])]
    l1 = bow.histograms(images, vocab, norm="l1", binary=False)
    l2 = bow.histograms(images, vocab, norm="l2", binary=False)
    assert l1.shape == (3, 2)
    assert l1[0, word_a] == 1.0 and l1[0, 1 - word_a] == 0.0
    assert np.all(l1[1] == 0) and np.all(l2[1] == 0)  # no keypoints: an all-zero histogram
    assert l1[2, word_a] == pytest.approx(0.25) and l1[2, 1 - word_a] == pytest.approx(0.75)
    assert np.linalg.norm(l2[2]) == pytest.approx(1.0)
    assert l2[2, 1 - word_a] / l2[2, word_a] == pytest.approx(3.0)
    with pytest.raises(bow.BowError, match="only 120 train descriptors for a vocabulary of 500"):
        bow.fit_vocabulary([a, b], 500, binary=False, seed=0)


def test_orb_bits_make_euclidean_distance_hamming():
    rng = np.random.default_rng(1)
    packed = rng.integers(0, 256, (2, 32), dtype=np.uint8)
    bits = bow.as_float(packed, binary=True)
    assert bits.shape == (2, 256) and set(np.unique(bits)) <= {0.0, 1.0}
    hamming = int(np.unpackbits(packed[0] ^ packed[1]).sum())
    assert float(((bits[0] - bits[1]) ** 2).sum()) == hamming


@pytest.mark.slow
def test_bow_sift_grid_beats_chance_and_logs_runs(digits64, tmp_path, capsys):
    root = tmp_path / "root"
    cmd = [PY, BOW, "--data", digits64, "--vocab", "24", "48", "--classifier", "linear", "rbf", "rf",
           "--max-images", "500", "--trees", "50", "--out", root, "--run", "bw"]
    out = run_cmd(cmd).stdout
    assert "6 cells (sift x vocab 24, 48 x linear, rbf, rf), 0 already DONE" in out
    assert "6 of 6 cells DONE" in out
    ids = [f"bw-sift-v{v}-{c}" for v in (24, 48) for c in ("linear", "rbf", "rf")]
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(ids)
    table = read_metrics(root)
    assert sorted(set(table["run_id"].to_pylist())) == sorted(ids)
    # per run: train 8 rows; val and test: acc1, precision, recall, f1, 10 x acc_class/i, samples, skipped,
    # empty, keypoints = 18 rows each; all at epoch 0, step 0
    assert table.num_rows == 6 * (8 + 2 * 18)
    assert set(table["step"].to_pylist()) == {0} and set(table["epoch"].to_pylist()) == {0}
    one = rows(table.filter(pc.equal(table["run_id"], "bw-sift-v48-rbf")))
    assert sorted(set(rows(one, "train")["metric"].to_pylist())) == sorted(
        ["acc1", "samples", "skipped", "empty", "keypoints", "extract_s", "vocab_s", "fit_s"])
    assert {"acc1", "precision", "recall", "f1", "acc_class/0", "acc_class/9", "samples", "empty"} <= set(
        rows(one, "test")["metric"].to_pylist())
    assert values(one, "train", "samples") == [500.0]
    assert values(one, "val", "samples") == [179.0] and values(one, "test", "samples") == [359.0]
    assert values(one, "test", "empty") == [0.0] and values(one, "train", "keypoints")[0] > 5
    # well above chance (10 classes: 0.1) on held-out digits, for every classifier at 48 words
    test_acc = {c: values(rows(table.filter(pc.equal(table["run_id"], f"bw-sift-v48-{c}"))), "test", "acc1")[0]
                for c in ("linear", "rbf", "rf")}
    assert min(test_acc.values()) > 0.45, test_acc
    # summaries: monitor val/acc1 equal to the logged value, the grid axes as cfg.* columns
    summ = {r["run_id"]: r for r in read_summaries(root).to_pylist()}
    s = summ["bw-sift-v48-rbf"]
    assert s["status"] == "DONE" and s["monitor"] == "val/acc1" and s["sweep"] == "bw"
    assert s["best"] == values(one, "val", "acc1")[0] and s["test/acc1"] == test_acc["rbf"]
    assert (s["cfg.bow.detector"], s["cfg.bow.vocab"], s["cfg.bow.classifier"]) == ("sift", 48, "rbf")
    run = root / "runs" / "bw-sift-v48-rbf"
    assert (run / "DONE").is_file() and (run / "model.pkl").is_file()
    assert read_run(run)["attempts"][0]["status"] == "DONE"
    res = json.loads((run / "test_results.json").read_text())
    cm = np.array(res["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 359
    assert np.trace(cm) / 359 == pytest.approx(test_acc["rbf"])
    # the same command again: every cell is DONE, nothing is extracted or logged twice
    parts = sorted(str(p) for p in root.glob("runs/*/metrics/*.parquet"))
    args = [str(c) for c in cmd[2:]]
    assert bow.main(args) == 0
    again = capsys.readouterr().out
    assert "6 already DONE" in again and "sift train:" not in again
    assert sorted(str(p) for p in root.glob("runs/*/metrics/*.parquet")) == parts
    # another setting under the same run name is refused, not mixed in
    assert bow.main(args + ["--norm", "l1"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err
    assert sorted(str(p) for p in root.glob("runs/*/metrics/*.parquet")) == parts


@pytest.mark.slow
def test_bow_orb_path_runs(digits64, tmp_path, capsys):
    # ORB ignores a 31 px border: --min-side enlarges the 64 px digits so it finds keypoints
    code = bow.main(["--data", str(digits64), "--detector", "orb", "--min-side", "128", "--vocab", "32",
                     "--classifier", "linear", "--max-images", "300", "--out", str(tmp_path), "--run", "orb"])
    out = capsys.readouterr().out
    assert code == 0, out
    table = read_metrics(tmp_path, run_id="orb-orb-v32-linear")
    assert values(table, "train", "samples") == [300.0] and values(table, "train", "keypoints")[0] > 10
    assert values(table, "test", "acc1")[0] > 0.35  # chance is 0.1
    cfg = (tmp_path / "runs" / "orb-orb-v32-linear" / "config.yaml").read_text()
    assert "detector: orb" in cfg and "min_side: 128" in cfg


@pytest.mark.slow
def test_bow_parallel_extraction_keeps_manifest_order(digits64, monkeypatch):
    monkeypatch.setattr(bow.features, "CHUNK", 20)  # 3 tasks for 2 spawned workers
    spec = bow.DetectorSpec("sift")
    one = bow.extract_split(digits64, "val", spec, max_images=60)
    two = bow.extract_split(digits64, "val", spec, max_images=60, workers=2)
    assert one.n == two.n == 60 and one.keys == two.keys and one.labels == two.labels
    assert all(np.array_equal(a, b) for a, b in zip(one.descriptors, two.descriptors))
    assert one.descriptors[0].dtype == np.uint8 and one.descriptors[0].shape[1] == 128


@pytest.mark.slow
def test_bow_counts_images_without_keypoints(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "photos", classes=("a", "b"), n_per_class=5, splits=("train", "val", "test"),
                            size=(64, 64))
    # uniform images have no keypoint; grey levels differ because the packer drops duplicate images
    for grey, rel in ((60, "train/a/blank_0.png"), (128, "train/b/blank_1.png"), (200, "test/a/blank_2.png")):
        Image.fromarray(np.full((64, 64, 3), grey, np.uint8)).save(src / rel)
    run_cmd([PY, "-m", "shards", "pack", "imagefolder", src, tmp_path / "shards"])
    code = bow.main(["--data", str(tmp_path / "shards"), "--vocab", "8", "--classifier", "linear",
                     "--out", str(tmp_path / "root"), "--run", "blank"])
    out = capsys.readouterr().out
    assert code == 0, out
    table = read_metrics(tmp_path / "root")
    assert values(table, "train", "empty") == [2.0] and values(table, "train", "samples") == [12.0]
    assert values(table, "val", "empty") == [0.0] and values(table, "test", "empty") == [1.0]
    assert "train: 12 images" in out and "2 without keypoints" in out


@pytest.mark.slow
def test_bow_kaze_path_runs(digits64, tmp_path, capsys):
    assert bow.detector_unavailable("kaze") is None  # requirements.txt pins opencv-contrib-python-headless
    code = bow.main(["--data", str(digits64), "--detector", "kaze", "--vocab", "32", "--classifier", "linear",
                     "--max-images", "300", "--out", str(tmp_path), "--run", "kz"])
    assert code == 0, capsys.readouterr().out
    table = read_metrics(tmp_path, run_id="kz-kaze-v32-linear")
    assert values(table, "test", "acc1")[0] > 0.3


def test_bow_kaze_unavailable_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bow.features, "_kaze_factory", lambda: None)  # an OpenCV build without contrib
    code = bow.main(["--data", str(tmp_path), "--detector", "sift", "kaze", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "KAZE is not in this OpenCV build" in err[0] and "opencv-contrib" in err[0]
    assert not (tmp_path / "runs").exists()  # refused before anything was written


# ---------------------------------------------------------------------------- S001's settings (issue 17)

def test_kaze_and_fast_freak_describe_an_image():
    img = np.asarray(Image.fromarray(photos(1, size=(160, 160), seed=3)[0]).convert("L"))  # a real photo crop
    for name, width, dtype in (("kaze", 64, np.float32), ("freak", 64, np.uint8)):
        assert bow.detector_unavailable(name) is None
        spec = bow.DetectorSpec(name)
        des = bow.describe(bow.make_detector(spec), spec, img)
        assert des.ndim == 2 and des.shape[1] == width and des.dtype == dtype and len(des) > 5, (name, des.shape)
    spec = bow.DetectorSpec("freak", max_keypoints=5)
    assert spec.binary and len(bow.describe(bow.make_detector(spec), spec, img)) <= 5
    assert bow.as_float(des, binary=True).shape[1] == 512  # FREAK: 512 bits -> Hamming as squared L2
    blank = np.full((64, 64), 90, np.uint8)
    assert bow.describe(bow.make_detector(spec), spec, blank).shape == (0, 64)


def test_clusters_norm_divides_counts_by_vocabulary_size_and_matchers_agree():
    rng = np.random.default_rng(0)
    blobs = [np.clip(rng.normal(m, 3, (60, 128)), 0, 255).astype(np.uint8) for m in (30, 110, 200)]
    vocab = bow.fit_vocabulary(blobs, 3, binary=False, seed=0)
    images = [blobs[0][:4], np.zeros((0, 128), np.uint8), np.concatenate([blobs[1][:2], blobs[2][:6]])]
    h = bow.histograms(images, vocab, norm="clusters", binary=False)
    counts = np.sort(h * 3, axis=1)
    assert np.allclose(counts, [[0, 0, 4], [0, 0, 0], [0, 2, 6]])  # counts / k, not / keypoints
    x = bow.as_float(np.concatenate(blobs), binary=False)
    exact = vocab.predict(x)
    for matcher in ("bf", "flann"):  # well separated words: FLANN's approximate search finds the same
        assert np.array_equal(bow.assign_words(x, vocab, matcher, seed=0), exact), matcher
        assert np.array_equal(bow.histograms(images, vocab, norm="l1", binary=False, matcher=matcher),
                              bow.histograms(images, vocab, norm="l1", binary=False))
    with pytest.raises(bow.BowError, match="unknown matcher"):
        bow.assign_words(x, vocab, "hamming")


def test_intersection_kernel_and_svm_iteration_cap():
    a = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    b = np.array([[0.1, 0.6, 0.3], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    k = bow.intersection_kernel(a, b)
    assert k.shape == (2, 3) and np.allclose(k, [[0.1 + 0.5 + 0.3, 0.3, 0.2 + 0.5], [0.1, 0.0, 0.5]])
    rng = np.random.default_rng(1)
    x = rng.dirichlet(np.ones(20), 400)
    assert np.allclose(bow.intersection_kernel(x, x[:7]), np.minimum(x[:, None], x[None, :7]).sum(-1))
    svm = bow.make_classifier("inter", C=2.0, svm_iter=50)
    assert svm.kernel is bow.intersection_kernel and svm.C == 2.0 and svm.max_iter == 50
    assert bow.make_classifier("linear", svm_iter=123).max_iter == 123
    assert bow.make_classifier("linear").max_iter == 10_000 and bow.make_classifier("rbf").max_iter == -1
    assert bow.make_classifier("rf", trees=7).n_estimators == 7


@pytest.mark.slow
def test_bow_s001_settings_freak_inter_clusters_flann_iterations(digits64, tmp_path, capsys):
    """S001's knobs on the 64 px digits: FAST+FREAK and SIFT, histograms / k, FLANN and brute-force words,
    the intersection kernel, an iteration cap, a 250-word vocabulary; all in config.yaml and results.json."""
    root = tmp_path / "root"
    common = ["--data", str(digits64), "--max-images", "300", "--out", str(root)]
    code = bow.main(common + ["--norm", "clusters", "--detector", "freak", "--min-side", "128", "--vocab", "32", "--classifier",
                              "linear", "inter", "--matcher", "flann", "--svm-iter", "5", "--run", "s1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "flann words, clusters" in out and "not converged" in out  # 5 iterations do not converge
    table = read_metrics(root)
    for clf in ("linear", "inter"):
        t = table.filter(pc.equal(table["run_id"], f"s1-freak-v32-{clf}"))
        assert values(t, "train", "keypoints")[0] > 10 and values(t, "test", "acc1")[0] > 0.2  # chance 0.1
        cfg = yaml.safe_load((root / "runs" / f"s1-freak-v32-{clf}" / "config.yaml").read_text())["bow"]
        assert (cfg["detector"], cfg["norm"], cfg["matcher"], cfg["svm_iter"], cfg["classifier"]) == (
            "freak", "clusters", "flann", 5, clf)
        res = json.loads((root / "runs" / f"s1-freak-v32-{clf}" / "results.json").read_text())
        assert res["train"]["converged"] is False
    summ = {r["run_id"]: r for r in read_summaries(root).to_pylist()}
    assert summ["s1-freak-v32-inter"]["converged"] is False and summ["s1-freak-v32-inter"]["cfg.bow.matcher"] == "flann"
    # brute-force words, a 250-word vocabulary (S001 2.3.3-2.3.4), the intersection kernel unconstrained.
    # Histograms / k are tiny (~keypoints / k^2 per word): at C=1 the intersection SVM predicts one class,
    # so with --norm clusters C must grow with k; on L1 histograms C=1 learns
    code = bow.main(common + ["--vocab", "250", "--classifier", "inter", "--norm", "l1", "--matcher", "bf",
                              "--run", "s2"])
    out = capsys.readouterr().out
    assert code == 0, out
    t = read_metrics(root, run_id="s2-sift-v250-inter")
    assert values(t, "test", "acc1")[0] > 0.6, out
    assert json.loads((root / "runs/s2-sift-v250-inter/results.json").read_text())["train"]["converged"] is True
    code = bow.main(common + ["--vocab", "250", "--classifier", "inter", "--norm", "clusters", "--C", "1000",
                              "--run", "s3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert values(read_metrics(root, run_id="s3-sift-v250-inter"), "test", "acc1")[0] > 0.6, out


def test_default_settings_keep_their_run_names_and_config_hashes():
    """matcher and svm_iter at their defaults leave the hashes of grids run before they existed unchanged."""
    manifest = {"name": "d"}
    p = bow.BowParams(data="x")
    base = bow._common_config(p, manifest)
    assert "matcher" not in base and "svm_iter" not in base
    cfg = bow.cell_config(p, manifest, "b", "sift", 100, "linear")
    old = json.loads(json.dumps(cfg))
    del old["bow"]["matcher"], old["bow"]["svm_iter"]
    assert bow._config_hash(cfg) == bow._config_hash(old)
    p2 = bow.BowParams(data="x", matcher="flann")
    assert bow._common_config(p2, manifest)["matcher"] == "flann"
    assert bow._config_hash(bow.cell_config(p2, manifest, "b", "sift", 100, "linear")) != bow._config_hash(cfg)


# ============================================================================ IDX files

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_plain_and_gz(tmp_path, dtype):
    rng = np.random.default_rng(3)
    arr = (rng.normal(0, 50, (5, 4, 3))).astype(dtype)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        dcgan.write_idx(tmp_path / name, arr)
        back = dcgan.read_idx(tmp_path / name)
        assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
        np.testing.assert_array_equal(back, arr)
    raw = (tmp_path / "x-idx3-ubyte").read_bytes()
    assert raw[:4] == bytes([0, 0, {np.uint8: 8, np.int8: 9, np.int16: 11, np.int32: 12, np.float32: 13,
                                    np.float64: 14}[dtype], 3])
    assert raw[4:16] == b"\x00\x00\x00\x05\x00\x00\x00\x04\x00\x00\x00\x03"  # big-endian dimensions
    assert gzip.decompress((tmp_path / "x-idx3-ubyte.gz").read_bytes()) == raw


def test_idx_matches_the_published_layout(tmp_path):
    # hand-built like the MNIST label file: magic 0x00000801, count, then one byte per label
    raw = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 2, 1])
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(raw)
    np.testing.assert_array_equal(dcgan.read_idx(tmp_path / "train-labels-idx1-ubyte"), [7, 2, 1])
    big = bytes([0, 0, 0x0B, 1]) + (2).to_bytes(4, "big") + (258).to_bytes(2, "big") + (-2).to_bytes(2, "big",
                                                                                                  signed=True)
    np.testing.assert_array_equal(dcgan.parse_idx(big), [258, -2])


def test_idx_damaged_files_are_errors(tmp_path):
    good = dcgan.idx_bytes(np.zeros((2, 3, 3), np.uint8))
    cases = {"truncated": good[:-1], "extra": good + b"\0", "magic": b"\x01" + good[1:],
             "type": good[:2] + b"\x07" + good[3:], "gz": gzip.compress(good)[:-6], "short": good[:6]}
    expect = {"truncated": "data bytes", "extra": "data bytes", "magic": "not an IDX file",
              "type": "unknown IDX data type 0x07", "gz": "damaged gzip", "short": "truncated IDX header"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(dcgan.DataError, match=expect[name]):
            dcgan.read_idx(tmp_path / name)


def test_load_mnist_dir_finds_names_and_checks_labels(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    dcgan.write_idx(tmp_path / "t10k-images.idx3-ubyte", imgs)  # the dotted variant some copies use
    dcgan.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([4, 9], np.uint8))
    got, labels = dcgan.load_mnist_dir(tmp_path, "test")
    np.testing.assert_array_equal(got, imgs)
    assert labels.tolist() == [4, 9]
    with pytest.raises(dcgan.DataError, match="no train-images-idx3-ubyte"):
        dcgan.load_mnist_dir(tmp_path, "train")
    dcgan.write_idx(tmp_path / "train-images-idx3-ubyte", imgs)
    dcgan.write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    with pytest.raises(dcgan.DataError, match="3 labels for 2 images"):
        dcgan.load_mnist_dir(tmp_path, "train")


@pytest.mark.parametrize("size", [28, 32, 64])
def test_dcgan_shapes(size):
    G, D = dcgan.Generator(nz=8, ngf=4, img_size=size), dcgan.Discriminator(ndf=4, img_size=size)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, 1, size, size) and x.abs().max() <= 1.0  # tanh images
    assert D(x).shape == (3,)
    kinds = [type(m).__name__ for m in G.net]
    assert "BatchNorm2d" in kinds and "ConvTranspose2d" in kinds
    # the default discriminator has no BatchNorm (it collapsed the generator on digits: see the progress test)
    assert "BatchNorm2d" not in [type(m).__name__ for m in D.net] and "LeakyReLU" in [type(m).__name__ for m in D.net]
    paper = dcgan.Discriminator(ndf=4, img_size=size, norm="batch")
    assert "BatchNorm2d" in [type(m).__name__ for m in paper.net] and paper(x).shape == (3,)
    assert type(paper.net[1]).__name__ == "LeakyReLU"  # no BatchNorm on the discriminator's first layer
    s001 = dcgan.Discriminator(ndf=4, img_size=size, extra_conv=32)  # S001's port: one more 32-filter conv
    convs = [m for m in s001.net if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len([m for m in D.net if isinstance(m, torch.nn.Conv2d)]) + 1
    assert convs[1].out_channels == 32 and convs[1].stride == (1, 1) and s001(x).shape == (3,)


def test_dcgan_rejects_unplannable_size():
    with pytest.raises(dcgan.DataError, match="4 or 7 times a power of two"):
        dcgan.spatial_plan(30)


# ============================================================================ DCGAN runs

GAN_ARGS = ["--epochs", "3", "--batch-size", "32", "--ngf", "8", "--ndf", "8", "--nz", "16", "--n-samples", "16"]
STEPS_PER_EPOCH = 10  # 320 images // 32


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """320 real digits at 28 px in the MNIST layout: images gzip-compressed, labels plain."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize(
        (28, 28), Image.Resampling.BILINEAR)) for im in d.images[:320]])
    out = tmp_path_factory.mktemp("mnist")
    dcgan.write_idx(out / "train-images-idx3-ubyte.gz", imgs)
    dcgan.write_idx(out / "train-labels-idx1-ubyte", d.target[:320].astype(np.uint8))
    return out


def gan(mnist_dir, root, *extra):
    return run_cmd([PY, GAN, "--mnist-dir", mnist_dir, *GAN_ARGS, "--out", root, "--run", "g", *extra])


def paused_in_save(mnist_dir, root, save: int) -> tuple[subprocess.Popen, Path]:
    """Start run g and return once it waits inside checkpoint save number `save` (the checkpoint test
    seam of imgtrain.engine.checkpoint, set by tests/hooked_dcgan.py): the process, and the flag file whose
    removal lets it go on."""
    flag = root / "paused"
    env = dict(os.environ, OMP_NUM_THREADS="1", IMGTRAIN_TEST_PAUSE_IN_SAVE=str(flag),
               IMGTRAIN_TEST_PAUSE_AT_SAVE=str(save))
    proc = subprocess.Popen([str(PY), str(ROOT / "tests/hooked_dcgan.py"), "--mnist-dir", str(mnist_dir), *GAN_ARGS,
                             "--out", str(root), "--run", "g"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 180
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if not flag.exists():
        proc.kill()
        raise AssertionError(f"run g never reached checkpoint save {save}:\n{proc.communicate()[0][-4000:]}")
    return proc, flag


@pytest.fixture(scope="module")
def reference_run(mnist_dir, tmp_path_factory) -> Path:
    """Three uninterrupted epochs: what every interrupted or extended run must end with."""
    root = tmp_path_factory.mktemp("gan_ref")
    gan(mnist_dir, root)
    return root / "runs" / "g"


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path):
    sa, sb = weights(a), weights(b)
    assert sa["step"] == sb["step"] == 3 * STEPS_PER_EPOCH and sa["epoch"] == sb["epoch"] == 3
    for net in ("G", "D"):
        for k in sa[net]:
            assert torch.equal(sa[net][k], sb[net][k]), f"{net}.{k} differs"


def assert_complete_metrics(run: Path):
    table = read_metrics(run)
    for m in ("d_loss", "g_loss", "d_x", "d_g_z1", "d_g_z2"):
        steps = rows(table, "train", m)["step"].to_pylist()
        assert steps == list(range(1, 3 * STEPS_PER_EPOCH + 1)), m  # every step once
    epochs = rows(table, "train", "epoch_g_loss")
    assert epochs["epoch"].to_pylist() == [0, 1, 2]
    assert epochs["step"].to_pylist() == [10, 20, 30]
    return table


@pytest.mark.slow
def test_dcgan_mnist_idx_run(reference_run):
    run = reference_run
    table = assert_complete_metrics(run)
    assert (run / "DONE").is_file()
    d_x = values(table, "train", "d_x")
    assert all(0.0 < v < 1.0 for v in d_x) and all(np.isfinite(values(table, "train", "g_loss")))
    for e in (1, 2, 3):
        with Image.open(run / "samples" / f"epoch-{e:04d}.png") as im:
            im.load()
            # 16 samples -> 4 x 4 grid of 28 px images with 2 px padding
            assert im.size == (4 * 30 + 2, 4 * 30 + 2)
            assert np.asarray(im.convert("L")).std() > 1  # not a blank image
    with Image.open(run / "samples" / "real.png") as im:
        assert im.size == (122, 122)
    state = weights(run)
    assert state["fixed_noise"].shape == (16, 16)
    assert {"G", "D", "opt_g", "opt_d", "rng"} <= set(state)
    s = read_summaries(run).to_pylist()[0]
    assert s["status"] == "DONE" and s["epochs"] == 3 and s["steps"] == 30
    assert s["monitor"] == "train/epoch_g_loss" and s["best"] == min(values(table, "train", "epoch_g_loss"))
    assert s["cfg.model.nz"] == 16 and s["cfg.data.source"] == "mnist_idx" and s["cfg.data.images"] == 320


@pytest.mark.slow
def test_dcgan_default_settings_make_progress(mnist_dir, tmp_path, capsys):
    """The job's default discriminator (no BatchNorm) learns the digits: after 320 steps the samples of the
    fixed noise are diverse, nearer the real images than an untrained generator's, and a classifier of real
    digits sees many different digits in them. With --d-norm batch (the paper's) the same run collapsed to
    one flat image (diversity 0.004, one digit), which these thresholds reject."""
    from sklearn.linear_model import LogisticRegression
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess runs do (OMP_NUM_THREADS=1): 2 threads on 2 busy cores ran 20x slower
    try:
        code = dcgan.main(["--mnist-dir", str(mnist_dir), "--epochs", "32", "--batch-size", "32", "--ngf", "16",
                           "--ndf", "16", "--nz", "16", "--n-samples", "64", "--out", str(tmp_path), "--run", "p"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().out
    state = weights(tmp_path / "runs" / "p")
    assert state["step"] == 320
    cfg = yaml.safe_load((tmp_path / "runs/p/config.yaml").read_text())
    assert cfg["model"]["d_norm"] == "none"
    real = dcgan.to_tensor(dcgan.load_mnist_dir(mnist_dir)[0], 28)
    labels = dcgan.load_mnist_dir(mnist_dir)[1]

    def pooled(x):  # 7x7 averages: enough to tell digits apart
        return F.avg_pool2d(x, 4).flatten(1).numpy()

    def samples(G):
        G.eval()
        with torch.no_grad():
            return G(state["fixed_noise"])

    def nearest(x):  # mean distance of each sample to its nearest real image
        return torch.cdist(x.flatten(1), real.flatten(1)).min(1).values.mean().item()

    G = dcgan.Generator(nz=16, ngf=16, img_size=28)
    G.apply(dcgan.init_weights)
    untrained = samples(G)
    G.load_state_dict(state["G"])
    x = samples(G)
    diversity = x.std(0).mean().item()  # per-pixel spread over the 64 samples; 0 for a collapsed generator
    digits = LogisticRegression(max_iter=2000).fit(pooled(real), labels).predict(pooled(x))
    assert diversity > 0.12, diversity
    assert nearest(x) < nearest(untrained) - 2.5, (nearest(x), nearest(untrained))
    assert len(set(digits.tolist())) >= 5, digits


@pytest.mark.slow
def test_dcgan_extend_resumes_where_it_stopped(mnist_dir, reference_run, tmp_path, capsys):
    first = gan(mnist_dir, tmp_path, "--epochs", "1")  # the later --epochs wins
    assert "epoch 1/1 step 10" in first.stdout
    run = tmp_path / "runs" / "g"
    assert (run / "DONE").is_file() and not (run / "samples" / "epoch-0002.png").exists()
    second = gan(mnist_dir, tmp_path)
    assert "resuming g at epoch 2, batch 0/10, step 10 (attempt 1)" in second.stdout
    assert "epoch 3/3 step 30" in second.stdout and (run / "DONE").is_file()
    table = assert_complete_metrics(run)
    assert sorted(set(rows(table, "train", "d_loss")["attempt"].to_pylist())) == [0, 1]
    assert_same_weights(run, reference_run)  # resumed = uninterrupted, bit for bit
    assert [a["status"] for a in read_run(run)["attempts"]] == ["DONE", "DONE"]
    assert dcgan.main(["--mnist-dir", str(mnist_dir), *GAN_ARGS, "--out", str(tmp_path), "--run", "g"]) == 0
    assert "run g is already DONE (3 epochs" in capsys.readouterr().out and len(read_run(run)["attempts"]) == 2
    # other settings under the same run id: refused (exit 2), the run is left as it was
    code = dcgan.main(["--mnist-dir", str(mnist_dir), *GAN_ARGS[:-4], "--nz", "32", "--n-samples", "16",
                       "--out", str(tmp_path), "--run", "g"])
    assert code == 2 and (run / "DONE").is_file() and len(read_run(run)["attempts"]) == 2
    assert "config hash" in capsys.readouterr().err


@pytest.mark.slow
def test_dcgan_sigterm_mid_epoch_resumes_exactly(mnist_dir, reference_run, tmp_path):
    # pause inside the first checkpoint save (end of epoch 1), signal, let it go on: the run stops after the
    # next step with the position inside epoch 2 in last.pt, and exits 75
    proc, flag = paused_in_save(mnist_dir, tmp_path, 1)
    try:
        proc.send_signal(signal.SIGTERM)
        flag.unlink()
        out = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out
    assert "SIGTERM: stopped at epoch 2 batch 1, step 11" in out
    run = tmp_path / "runs" / "g"
    state = weights(run)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 11)
    assert not (run / "DONE").exists() and read_run(run)["attempts"][0]["status"] == "STOPPED"
    resumed = gan(mnist_dir, tmp_path)
    assert "resuming g at epoch 2, batch 1/10, step 11" in resumed.stdout
    assert_complete_metrics(run)
    assert_same_weights(run, reference_run)


@pytest.mark.slow
def test_dcgan_kill9_replay_counts_once(mnist_dir, reference_run, tmp_path):
    # kill -9 inside the second checkpoint save: epoch 2's metrics are on disk, last.pt still says epoch 1
    proc, _ = paused_in_save(mnist_dir, tmp_path, 2)
    proc.kill()
    proc.communicate()
    run = tmp_path / "runs" / "g"
    assert weights(run)["epoch"] == 1
    gan(mnist_dir, tmp_path)
    # epoch 2's 10 steps were logged twice (attempt 0, replayed in attempt 1); the run's end merged its
    # parts into one file that holds each step once, attempt 1's replay winning
    files = sorted((run / "metrics").glob("*.parquet"))
    assert [p.name.split("-")[0] for p in files] == ["compact"], files
    assert rows(pq.read_table(files[0]), "train", "d_loss").num_rows == 30
    table = assert_complete_metrics(run)
    d = rows(table, "train", "d_loss")
    attempt_of = dict(zip(d["step"].to_pylist(), d["attempt"].to_pylist()))
    assert {attempt_of[s] for s in range(1, 11)} == {0} and {attempt_of[s] for s in range(11, 31)} == {1}
    assert [a["status"] for a in read_run(run)["attempts"]] == ["lost", "DONE"]
    assert_same_weights(run, reference_run)


@pytest.mark.slow
def test_dcgan_on_shards_resizes(digits_shards, tmp_path, capsys):
    code = dcgan.main(["--data", str(digits_shards), "--img-size", "32", "--epochs", "1", "--batch-size", "32",
                       "--max-images", "128", "--ngf", "8", "--ndf", "8", "--n-samples", "9", "--out", str(tmp_path),
                       "--run", "s"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "128 images of digits (train) at 32 px, batch 32, 4 steps/epoch" in out
    run = tmp_path / "runs" / "s"
    assert len(values(read_metrics(run), "train", "g_loss")) == 4
    with Image.open(run / "samples" / "epoch-0001.png") as im:
        assert im.size == (3 * 34 + 2, 3 * 34 + 2)
    assert (run / "DONE").is_file()


# ============================================================================ command lines

@pytest.mark.slow
def test_help_and_missing_data_are_clear(tmp_path):
    for job, words in ((BOW, ["--detector", "--vocab", "--classifier", "examples:", "Exit status"]),
                       (GAN, ["--mnist-dir", "--img-size", "examples:", "75 stopped"])):
        out = run_cmd([PY, job, "--help"]).stdout
        assert all(w in out for w in words), out
    missing = tmp_path / "nope"
    proc = run_cmd([PY, BOW, "--data", missing, "--out", tmp_path], check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"bow.py: error: --data {missing}: no such directory"
    assert not (tmp_path / "runs").exists()


def test_dcgan_missing_data_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    for flag in ("--mnist-dir", "--data"):
        assert dcgan.main([flag, str(missing), "--out", str(tmp_path)]) == 2
        assert capsys.readouterr().err == f"dcgan.py: error: {flag} {missing}: no such directory\n"
    (tmp_path / "empty").mkdir()
    assert dcgan.main(["--mnist-dir", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "no train-images-idx3-ubyte[.gz] in it" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
