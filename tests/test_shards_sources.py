"""Each source kind, packed from data written in its real format and read back with upstream
webdataset and tarfile."""

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image
from sourcedata import (add_bad_files, idx_bytes, read_split, write_ava, write_cifar10, write_cifar100,
                        write_imagefolder, write_mnist, write_tinyimagenet)

from shards.cli import main
from shards.manifest import load_manifest


def pack(capsys, *args) -> dict:
    assert main(["pack", *map(str, args)]) == 0, capsys.readouterr().err
    return load_manifest(args[2])


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def all_samples(out, manifest) -> dict[str, tuple[str, dict]]:
    return {s["__key__"]: (split, s) for split in manifest["splits"] for s in read_split(out, split)}


def load_batch(path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_cifar10_pixels_labels_and_splits_exact(tmp_path, capsys):
    root = write_cifar10(tmp_path / "src", n_per_batch=6, n_test=8)
    out = tmp_path / "out"
    m = pack(capsys, "cifar10", tmp_path / "src", out, "--shard-size", "7")
    assert m["task"] == "classification" and m["classes"][3] == "cat"
    assert m["splits"]["test"]["count"] == 8 and m["splits"]["train"]["count"] + m["splits"]["val"]["count"] == 30
    samples = all_samples(out, m)
    assert len(samples) == 38
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = load_batch(root / name)
        pixels = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for i, label in enumerate(batch[b"labels"]):
            split, s = samples[f"{name}-{i:05d}"]
            assert (split == "test") == (name == "test_batch")
            assert set(s) >= {"png", "cls", "json"}
            np.testing.assert_array_equal(decode(s["png"]), pixels[i])  # lossless, exact
            assert int(s["cls"]) == label
            meta = json.loads(s["json"])
            assert meta["filename"] == batch[b"filenames"][i].decode() and meta["class"] == m["classes"][label]


def test_cifar100_fine_and_coarse(tmp_path, capsys):
    root = write_cifar100(tmp_path / "src", n_train=20, n_test=10)
    fine = pack(capsys, "cifar100", root, tmp_path / "fine")
    coarse = pack(capsys, "cifar100", tmp_path / "src", tmp_path / "coarse", "--coarse")
    assert len(fine["classes"]) == 100 and len(coarse["classes"]) == 20 and coarse["name"] == "cifar100-coarse"
    batch = load_batch(root / "test")
    pixels = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    by_key = {s["__key__"]: s for s in read_split(tmp_path / "coarse", "test")}
    fine_by_key = {s["__key__"]: s for s in read_split(tmp_path / "fine", "test")}
    assert len(by_key) == 10
    for i in range(10):
        s, f = by_key[f"test-{i:05d}"], fine_by_key[f"test-{i:05d}"]
        assert int(s["cls"]) == batch[b"coarse_labels"][i] and int(f["cls"]) == batch[b"fine_labels"][i]
        meta = json.loads(s["json"])
        assert (meta["coarse_label"], meta["fine_label"]) == (batch[b"coarse_labels"][i], batch[b"fine_labels"][i])
        assert meta["class"] == f"coarse_{meta['coarse_label']:02d}"
        np.testing.assert_array_equal(decode(s["png"]), pixels[i])
        assert s["png"] == f["png"]


def test_digits_pixels_exact_after_nearest_upscale(tmp_path, capsys):
    from sklearn.datasets import load_digits

    out = tmp_path / "digits"
    m = pack(capsys, "digits", "-", out, "--upscale", "16")
    data = load_digits()
    counts = {k: v["count"] for k, v in m["splits"].items()}
    assert sum(counts.values()) == 1797 and 0.19 < counts["test"] / 1797 < 0.21 and 0.09 < counts["val"] / 1797 < 0.11
    assert m["image_stats"]["channels"] == 1
    seen = 0
    for split in m["splits"]:
        for s in read_split(out, split):
            i = int(s["__key__"].removeprefix("digits-"))
            assert s["__key__"] == f"digits-{i:04d}"
            img = Image.open(io.BytesIO(s["png"]))
            assert img.mode == "L" and img.size == (16, 16)
            expected = np.kron(data.images[i].astype(int) * 255 // 16, np.ones((2, 2), int))
            np.testing.assert_array_equal(np.asarray(img), expected)
            assert int(s["cls"]) == data.target[i]
            seen += 1
    assert seen == 1797


def test_imagefolder_keeps_jpeg_png_bytes_and_converts_the_rest(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", classes=("cat", "dog"), n_per_class=6,
                            formats=("jpg", "png", "webp", "bmp", "gif", "tiff"))
    out = tmp_path / "out"
    m = pack(capsys, "imagefolder", src, out, "--val-fraction", "0")
    assert m["classes"] == ["cat", "dog"] and list(m["splits"]) == ["train"]
    samples = read_split(out, "train")
    assert len(samples) == 12
    for s in samples:
        meta = json.loads(s["json"])
        original = (src / meta["id"]).read_bytes()
        ext = meta["id"].rsplit(".", 1)[1]
        assert s["__key__"] == meta["id"].rsplit(".", 1)[0] and int(s["cls"]) == m["classes"].index(meta["class"])
        if ext in ("jpg", "png"):
            assert s[ext] == original  # byte for byte
        else:
            assert "png" in s and not any(e in s for e in ("jpg", "webp", "bmp", "gif", "tiff"))
            ref = Image.open(io.BytesIO(original))  # first frame for GIF
            np.testing.assert_array_equal(decode(s["png"]), np.asarray(ref))


def test_imagefolder_with_split_folders_keeps_them(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=3, splits=("train", "val", "test"))
    (src / "train" / "owl").mkdir()  # a class present in one split only still gets an index
    m = pack(capsys, "imagefolder", src, tmp_path / "out", "--name", "animals")
    assert m["name"] == "animals" and m["classes"] == ["cat", "dog", "fox", "owl"]
    for split in ("train", "val", "test"):
        assert m["splits"][split]["class_counts"] == [3, 3, 3, 0]
        assert {s["__key__"].split("/")[0] for s in read_split(tmp_path / "out", split)} == {split}


def test_tinyimagenet_layout(tmp_path, capsys):
    root = write_tinyimagenet(tmp_path / "src", n_classes=3, n_train=4, n_val=2)
    m = pack(capsys, "tinyimagenet", tmp_path / "src", tmp_path / "out")
    assert m["classes"] == ["thing0", "thing1", "thing2"]
    assert m["splits"]["train"]["class_counts"] == [4, 4, 4] and m["splits"]["val"]["class_counts"] == [2, 2, 2]
    assert "test" not in m["splits"]
    annotations = dict(line.split("\t")[:2] for line in (root / "val" / "val_annotations.txt").read_text().splitlines())
    wnids = sorted((root / "wnids.txt").read_text().split())
    for s in read_split(tmp_path / "out", "val"):
        meta = json.loads(s["json"])
        assert meta["wnid"] == annotations[s["__key__"] + ".JPEG"] and int(s["cls"]) == wnids.index(meta["wnid"])
        assert s["jpg"] == (root / meta["id"]).read_bytes()


def test_ava_scores_tags_and_bad_rows(tmp_path, capsys):
    ava = write_ava(tmp_path / "ava", n=12, bad_rows=True)
    out = tmp_path / "out"
    m = pack(capsys, "ava", ava.root, out, "--val-fraction", "0.25")
    assert m["task"] == "score_distribution" and m["bins"] == list(range(1, 11)) and "classes" not in m
    assert "class_counts" not in m["splits"]["train"]
    samples = [s for split in m["splits"] for s in read_split(out, split)]
    assert sorted(s["__key__"] for s in samples) == sorted(ava.ids)
    for s in samples:
        assert "cls" not in s
        meta = json.loads(s["json"])
        votes = ava.votes[s["__key__"]]
        assert meta["votes"] == votes and meta["num_votes"] == sum(votes)
        assert meta["distribution"] == pytest.approx([v / sum(votes) for v in votes])
        assert meta["mean_score"] == pytest.approx(sum(i * v for i, v in enumerate(votes, 1)) / sum(votes))
        assert meta["challenge_name"] in ("Persuasive", "Reflections") and len(meta["tags"]) == len(meta["tag_names"])
        assert s["jpg"] == (ava.root / "images" / f"{s['__key__']}.jpg").read_bytes()
    reasons = {item["reason"] for item in m["skipped"]}
    assert len(m["skipped"]) == 5
    for line, word in ava.bad_lines.items():
        assert any(f"line {line}" in r and word in r for r in reasons), (line, word, reasons)
    assert "skipped 5" in capsys.readouterr().out


def test_ava_official_id_lists(tmp_path, capsys):
    ava = write_ava(tmp_path / "ava", n=10)
    (tmp_path / "train.txt").write_text("\n".join(ava.ids[:6]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(ava.ids[6:9]) + "\n")  # ids[9] is in neither list
    m = pack(capsys, "ava", ava.root, tmp_path / "out", "--train-ids", tmp_path / "train.txt",
             "--test-ids", tmp_path / "test.txt", "--val-fraction", "0")
    assert {s["__key__"] for s in read_split(tmp_path / "out", "test")} == set(ava.ids[6:9])
    assert {s["__key__"] for s in read_split(tmp_path / "out", "train")} == set(ava.ids[:6])
    assert [s["id"] for s in m["skipped"]] == [ava.ids[9]]


def test_bad_image_files_are_skipped_with_reasons(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=3)
    expected = add_bad_files(src / "dog")
    m = pack(capsys, "imagefolder", src, tmp_path / "out", "--val-fraction", "0")
    assert m["splits"]["train"]["count"] == 9
    skipped = {item["path"].rsplit("/", 1)[1]: item["reason"] for item in m["skipped"]}
    assert set(skipped) == set(expected)
    for name, word in expected.items():
        assert word in skipped[name]
    assert "skipped 3" in capsys.readouterr().out
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        assert not [n for n in tar.getnames() if "truncated" in n or "notes" in n or "empty" in n]


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, True)])
def test_mnist_idx_pixels_labels_and_official_split(tmp_path, capsys, gz, dotted):
    data = write_mnist(tmp_path / "MNIST" / "raw", n_train=40, n_test=10, gz=gz, dotted=dotted)
    out = tmp_path / "out"
    m = pack(capsys, "mnist", tmp_path / "MNIST", out, "--val-fraction", "0.25")  # the raw/ layout
    assert m["name"] == "mnist" and m["classes"] == [str(d) for d in range(10)]
    assert m["source"]["variant"] == "mnist" and "fashion" in m["source"]["variant_from"]
    assert m["splits"]["test"]["count"] == 10 and m["splits"]["val"]["count"] == 10  # 1 of 4 per class
    assert m["splits"]["train"]["count"] == 30 and m["image_stats"]["channels"] == 1
    seen = 0
    for split, (key, s) in ((sp, (s["__key__"], s)) for sp in m["splits"] for s in read_split(out, sp)):
        prefix, index = key.split("-")
        assert (split == "test") == (prefix == "t10k")
        img = Image.open(io.BytesIO(s["png"]))
        assert img.mode == "L" and img.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(img), data.images[prefix][int(index)])  # lossless, exact
        assert int(s["cls"]) == data.labels[prefix][int(index)] == json.loads(s["json"])["label"]
        seen += 1
    assert seen == 50


def test_fashion_mnist_class_names_by_flag_folder_or_name(tmp_path, capsys):
    write_mnist(tmp_path / "fashion-mnist", n_train=10, n_test=10)
    write_mnist(tmp_path / "plain", n_train=10, n_test=10)
    by_folder = pack(capsys, "mnist", tmp_path / "fashion-mnist", tmp_path / "a", "--val-fraction", "0")
    assert by_folder["name"] == "fashion_mnist" and by_folder["classes"][0] == "T-shirt/top"
    assert by_folder["classes"][9] == "Ankle boot" and len(by_folder["classes"]) == 10
    assert pack(capsys, "mnist", tmp_path / "plain", tmp_path / "b", "--fashion")["classes"] == by_folder["classes"]
    by_name = pack(capsys, "mnist", tmp_path / "plain", tmp_path / "c", "--name", "fashion_mnist")
    assert by_name["classes"] == by_folder["classes"] and by_name["name"] == "fashion_mnist"
    digits = pack(capsys, "mnist", tmp_path / "fashion-mnist", tmp_path / "d", "--no-fashion")
    assert digits["classes"] == [str(d) for d in range(10)] and digits["source"]["variant_from"] == "--no-fashion"
    assert main(["pack", "cifar10", str(tmp_path), str(tmp_path / "e"), "--fashion"]) == 2
    assert "--fashion does not apply to cifar10" in capsys.readouterr().err


@pytest.mark.parametrize("damage,words", [
    ("truncate", ["truncated IDX file", "10 x 28 x 28"]),
    ("magic", ["not an IDX image file", "0x00000801"]),
    ("truncate_gz", ["truncated or corrupt gzip"]),
    ("missing", ["missing t10k-labels-idx1-ubyte"]),
    ("count", ["10 images but", "9 labels"]),
])
def test_mnist_bad_idx_files_name_the_file(tmp_path, capsys, damage, words):
    data = write_mnist(tmp_path / "src", n_train=10, n_test=10, gz=damage == "truncate_gz")
    images = data.root / "t10k-images-idx3-ubyte"
    labels = data.root / "t10k-labels-idx1-ubyte"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "magic":
        images.write_bytes(labels.read_bytes())  # a labels file where the images should be
    elif damage == "truncate_gz":
        images = images.with_name(images.name + ".gz")
        images.write_bytes(images.read_bytes()[:-30])
    elif damage == "missing":
        labels.unlink()
    else:
        labels.write_bytes(idx_bytes(data.labels["t10k"][:9]))
    assert main(["pack", "mnist", str(data.root), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    named = labels if damage == "missing" else images
    assert (str(named) if damage != "missing" else str(data.root)) in err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "out").exists()
