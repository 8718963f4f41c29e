"""shards.manifest: the structure the training loader depends on, and its validation errors."""

import copy
import json
import re

import pytest
from sourcedata import write_imagefolder

from shards.cli import main
from shards.manifest import FORMAT, TOOL, ManifestError, load_manifest, shard_paths, validate_manifest


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    src = write_imagefolder(tmp_path_factory.mktemp("src") / "pets", n_per_class=5)
    out = tmp_path_factory.mktemp("out") / "pets"
    assert main(["pack", "imagefolder", str(src), str(out), "--shard-size", "4", "--test-fraction", "0.2"]) == 0
    return out


def test_manifest_has_exactly_the_contract_structure(packed):
    m = load_manifest(packed)
    assert list(m) == ["format", "name", "task", "classes", "splits", "image_stats", "skipped", "source", "created"]
    assert (m["format"], m["name"], m["task"]) == (FORMAT, "pets", "classification")
    assert m["classes"] == ["cat", "dog", "fox"]
    assert list(m["splits"]) == ["train", "val", "test"]
    for split, entry in m["splits"].items():
        assert list(entry) == ["count", "class_counts", "shards"] and len(entry["class_counts"]) == 3
        for shard in entry["shards"]:
            assert list(shard) == ["file", "count", "bytes", "sha256"] and shard["file"].startswith(split + "-")
            assert re.fullmatch(r"[0-9a-f]{64}", shard["sha256"])
    assert sum(e["count"] for e in m["splits"].values()) == 15
    stats = m["image_stats"]
    assert stats["channels"] == 3 and stats["sampled"] == m["splits"]["train"]["count"]
    assert all(0 < v < 1 for v in stats["mean"] + stats["std"])
    assert {"kind", "path", "splits", "seed", "val_fraction", "test_fraction"} <= set(m["source"])
    assert m["source"]["kind"] == "imagefolder" and m["source"]["test_fraction"] == 0.2
    assert m["created"]["tool"] == TOOL == "imgtrain-shards 0.1.0" and m["created"]["time"].endswith("+00:00")
    assert shard_paths(packed, m, "train")[0] == str(packed / "train-000000.tar")
    assert load_manifest(packed / "manifest.json") == m


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.pop("format"), "format: missing"),
    (lambda m: m.update(format="imgtrain-shards/2"), "format: expected"),
    (lambda m: m.update(task="regression"), "task: expected one of"),
    (lambda m: m.update(classes="cat"), "classes: expected list"),
    (lambda m: m["splits"].update(holdout=m["splits"]["val"]), "splits.holdout: unknown split"),
    (lambda m: m["splits"]["train"].update(count=99), "splits.train.class_counts: sums to"),
    (lambda m: m["splits"]["val"]["class_counts"].append(1), "splits.val.class_counts: expected 3"),
    (lambda m: m["splits"]["train"]["shards"][1].update(sha256="XYZ"), "splits.train.shards[1].sha256"),
    (lambda m: m["splits"]["train"]["shards"][0].update(file="val-000000.tar"), "splits.train.shards[0].file"),
    (lambda m: m["splits"]["test"]["shards"][0].update(count="3"), "splits.test.shards[0].count: expected integer"),
    (lambda m: m["image_stats"].update(channels=2), "image_stats.channels"),
    (lambda m: m["image_stats"].update(mean=[0.5]), "image_stats.mean: expected 3 numbers"),
    (lambda m: m["skipped"].append({"id": "x", "path": "y"}), "skipped[0].reason: missing"),
    (lambda m: m["source"].pop("seed"), "source.seed: missing"),
    (lambda m: m["created"].pop("tool"), "created.tool: missing"),
])
def test_every_problem_names_the_file_and_key(packed, tmp_path, edit, key):
    m = json.loads((packed / "manifest.json").read_text())
    bad = copy.deepcopy(m)
    edit(bad)
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{tmp_path / 'manifest.json'}: ") and key in str(info.value)


def test_missing_or_unparsable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="where.json: format: missing"):
        validate_manifest({}, "where.json")
