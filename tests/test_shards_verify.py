"""verify finds damaged data sets; info summarises; every subcommand has a helpful --help."""

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from sourcedata import write_ava, write_cifar10

from shards.cli import main
from shards.manifest import load_manifest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A small CIFAR-10 data set packed into train/val/test shards (copied per test before damage)."""
    src = tmp_path_factory.mktemp("src")
    write_cifar10(src, n_per_batch=6, n_test=8)
    out = tmp_path_factory.mktemp("packed") / "cifar10"
    assert main(["pack", "cifar10", str(src), str(out), "--shard-size", "8"]) == 0
    return out


@pytest.fixture
def copy(packed, tmp_path):
    return Path(shutil.copytree(packed, tmp_path / "ds"))


def verify(capsys, directory) -> tuple[int, str]:
    code = main(["verify", str(directory)])
    return code, capsys.readouterr().out


def rewrite_shard(directory: Path, file: str, edit) -> None:
    """Rebuild one shard with edit(list of (TarInfo, bytes)) and fix its manifest entry, so that
    only the edit itself is wrong."""
    with tarfile.open(directory / file) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    members = edit(members)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (directory / file).write_bytes(buf.getvalue())
    m = json.loads((directory / "manifest.json").read_text())
    for entry in m["splits"].values():
        for shard in entry["shards"]:
            if shard["file"] == file:
                keys = {i.name.split(".")[0] for i, _ in members}
                entry["count"] += len(keys) - shard["count"]
                shard.update(count=len(keys), bytes=len(buf.getvalue()),
                             sha256=hashlib.sha256(buf.getvalue()).hexdigest())
                if "class_counts" in entry:
                    for i, data in members:
                        if i.name.endswith(".cls") and i.name.split(".")[0].startswith("copy"):
                            entry["class_counts"][int(data)] += 1
    (directory / "manifest.json").write_text(json.dumps(m))


def test_verify_ok(packed, capsys):
    code, out = verify(capsys, packed)
    assert code == 0 and out.startswith("OK cifar10: 38 samples in ") and "test 8" in out


def test_verify_catches_a_flipped_byte(copy, capsys):
    shard = copy / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first image's data
    shard.write_bytes(bytes(data))
    code, out = verify(capsys, copy)
    assert code == 1 and "train-000001.tar: sha256 mismatch" in out and out.rstrip().endswith(str(copy))


def test_verify_catches_a_missing_shard(copy, capsys):
    (copy / "val-000000.tar").unlink()
    code, out = verify(capsys, copy)
    assert code == 1 and "val-000000.tar: missing shard" in out


def test_verify_catches_a_cross_split_duplicate(copy, capsys):
    with tarfile.open(copy / "train-000000.tar") as tar:
        train_png = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png"))

    def add_copy(members):
        extra = [(tarfile.TarInfo("copy-1.png"), train_png), (tarfile.TarInfo("copy-1.cls"), b"3"),
                 (tarfile.TarInfo("copy-1.json"), b'{"id": "copy-1"}')]
        return members + extra

    rewrite_shard(copy, "test-000000.tar", add_copy)
    load_manifest(copy)  # the manifest itself is consistent again
    code, out = verify(capsys, copy)
    assert code == 1
    (line,) = [l for l in out.splitlines() if "same image" in l]
    assert line.startswith("test-000000.tar: sample 'copy-1' has the same image as") and line.endswith("in train")


def test_verify_catches_duplicate_keys_and_bad_labels(copy, capsys):
    def damage(members):
        first_key = members[0][0].name.split(".")[0]
        out = []
        for info, data in members:
            if info.name == f"{first_key}.cls":
                data = b"42"  # out of range for 10 classes
            out.append((info, data))
        return out + [(tarfile.TarInfo(i.name), d) for i, d in members[:3]]  # the first sample again

    rewrite_shard(copy, "val-000000.tar", damage)
    code, out = verify(capsys, copy)
    assert code == 1 and "cls 42 out of range" in out and "duplicate key" in out


def test_verify_and_info_reject_a_broken_manifest(copy, capsys):
    m = json.loads((copy / "manifest.json").read_text())
    del m["splits"]["train"]["shards"][0]["sha256"]
    (copy / "manifest.json").write_text(json.dumps(m))
    code, out = verify(capsys, copy)
    assert code == 1 and "splits.train.shards[0].sha256: missing" in out
    assert main(["info", str(copy)]) == 1
    assert "manifest.json: splits.train.shards[0].sha256: missing" in capsys.readouterr().err


def test_verify_checks_ava_distributions(tmp_path, capsys):
    ava = write_ava(tmp_path / "ava", n=6)
    assert main(["pack", "ava", str(ava.root), str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    capsys.readouterr()
    assert verify(capsys, tmp_path / "out")[0] == 0

    def bad_distribution(members):
        return [(i, b'{"id": "x", "distribution": [0.5, 0.6]}' if i.name.endswith(".json") else d) for i, d in members]

    rewrite_shard(tmp_path / "out", "train-000000.tar", bad_distribution)
    code, out = verify(capsys, tmp_path / "out")
    assert code == 1 and out.count("json distribution is not 10") == 6


def test_info_text_and_json(packed, capsys):
    assert main(["info", str(packed)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("cifar10  (classification, imgtrain-shards/1)")
    assert "classes  10: airplane, automobile, bird" in text and "skipped  0" in text
    assert "image stats  channels 3" in text and "imgtrain-shards 0.1.0" in text
    assert main(["info", str(packed), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    m = load_manifest(packed)
    assert s["num_classes"] == 10 and s["skipped"] == 0 and s["image_stats"] == m["image_stats"]
    for split, entry in m["splits"].items():
        assert s["splits"][split]["samples"] == entry["count"]
        assert s["splits"][split]["shards"] == len(entry["shards"])
        assert s["splits"][split]["class_min"] == min(entry["class_counts"])


@pytest.mark.parametrize("command, words", [
    ([], ["pack", "verify", "info"]),
    (["pack"], ["KIND", "--workers", "--shard-size", "--max-shard-bytes", "--val-fraction", "--test-fraction",
                "--seed", "--strict", "--resize", "--format", "--submitit-array", "examples:",
                "python -m shards pack digits - data/digits --upscale 32"]),
    (["verify"], ["DIR", "sha256", "examples:", "python -m shards verify"]),
    (["info"], ["DIR", "--json", "examples:", "python -m shards info"]),
])
def test_help(command, words):
    result = subprocess.run([sys.executable, "-m", "shards", *command, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for word in words:
        assert word in result.stdout, word
