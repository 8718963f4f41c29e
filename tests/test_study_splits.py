"""Data splits the reference studies need (issue 17): fixed split lists (S001's 15-Scene 2,985 / 1,500),
80/20 of train with no test split (S003), TinyImageNet val carved from train with the official val kept
as test (S003), and validation on the test split only when asked for (S004)."""

import json

import pytest
from sourcedata import read_split, write_imagefolder, write_tinyimagenet

from shards.cli import main
from shards.manifest import load_manifest


def pack(capsys, *args) -> dict:
    assert main(["pack", *map(str, args)]) == 0, capsys.readouterr().err
    return load_manifest(args[2])


def keys(out, split) -> set[str]:
    return {s["__key__"] for s in read_split(out, split)}


# ------------------------------------------------------------------ a. fixed split lists

def test_split_lists_fix_the_splits_and_count_unlisted_files(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "scene", classes=("bedroom", "coast", "forest"), n_per_class=5)
    train = [f"{c}/img_{i:03d}.jpg" for c in ("bedroom", "coast", "forest") for i in range(3)]
    val = [f"./{c}/img_{i:03d}.jpg" for c in ("bedroom", "coast", "forest") for i in (3,)]
    (tmp_path / "train.txt").write_text("# 15-Scene style list\n" + "\n".join(train) + "\n\n")
    (tmp_path / "val.txt").write_text("\n".join(val) + "\n")
    out = tmp_path / "out"
    m = pack(capsys, "imagefolder", src, out, "--split-list", f"train={tmp_path / 'train.txt'}",
             "--split-list", f"val={tmp_path / 'val.txt'}")
    assert list(m["splits"]) == ["train", "val"]
    assert m["splits"]["train"]["class_counts"] == [3, 3, 3] and m["splits"]["val"]["class_counts"] == [1, 1, 1]
    assert keys(out, "train") == {p.rsplit(".", 1)[0] for p in train}
    assert keys(out, "val") == {p[2:].rsplit(".", 1)[0] for p in val}
    assert m["source"]["unlisted"] == 3 and m["skipped"] == []  # img_004 of each class: counted, not listed
    assert m["source"]["split_lists"] == {"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt")}
    assert "the files listed in" in m["source"]["splits"]
    assert "left out 3 file(s) in no --split-list" in capsys.readouterr().out
    # --strict does not fail for unlisted files (they are not skipped items); the joined spelling is the same
    joined = pack(capsys, "imagefolder", src, tmp_path / "strict", "--strict",
                  "--split-lists", f"train={tmp_path / 'train.txt'},val={tmp_path / 'val.txt'}")
    assert [s["sha256"] for e in joined["splits"].values() for s in e["shards"]] == \
        [s["sha256"] for e in m["splits"].values() for s in e["shards"]]


def test_split_list_of_train_only_carves_val_from_it(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", classes=("a", "b"), n_per_class=6, splits=("train", "test"))
    listed = [f"train/{c}/img_{i:03d}.jpg" for c in "ab" for i in range(4)] + ["test/a/img_000.jpg"]
    (tmp_path / "t.txt").write_text("\n".join(listed))
    m = pack(capsys, "imagefolder", src, tmp_path / "out", "--split-list", f"train={tmp_path / 't.txt'}",
             "--val-fraction", "0.25")
    assert list(m["splits"]) == ["train", "val"]  # the test/ folder is overridden by the list
    assert m["splits"]["val"]["class_counts"] == [1, 1] and m["splits"]["train"]["count"] == 7
    assert m["source"]["unlisted"] == 24 - 9


@pytest.mark.parametrize("content,words", [
    ("a/img_000.jpg\na/img_999.jpg\n", ["line 2", "a/img_999.jpg does not exist"]),
    ("a/img_000.jpg\n\na/img_000.jpg\n", ["line 3", "listed again", "line 1"]),
    ("readme.txt\n", ["line 1", "is not an image in a class folder"]),
])
def test_bad_split_list_names_the_list_file_and_line(tmp_path, capsys, content, words):
    src = write_imagefolder(tmp_path / "src", classes=("a", "b"), n_per_class=2)
    (src / "readme.txt").write_text("not in a class folder")
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text(content)
    assert main(["pack", "imagefolder", str(src), str(tmp_path / "out"), "--split-list", f"train={lst}"]) == 2
    err = capsys.readouterr().err
    assert str(lst) in err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("args,word", [
    (["--split-list", "train"], "expected NAME=FILE"),
    (["--split-list", "dev=x.txt"], "one of train, val, test"),
    (["--split-list", "train=a.txt", "--split-list", "train=b.txt"], "two lists for train"),
    (["--split-list", "val=/nonexistent/v.txt"], "/nonexistent/v.txt: cannot read the val list"),
])
def test_split_list_usage_errors(tmp_path, capsys, args, word):
    src = write_imagefolder(tmp_path / "src", classes=("a",), n_per_class=1)
    assert main(["pack", "imagefolder", str(src), str(tmp_path / "out"), *args]) == 2
    assert word in capsys.readouterr().err


def test_split_list_applies_to_imagefolder_only(tmp_path, capsys):
    assert main(["pack", "digits", "-", str(tmp_path / "out"), "--split-list", "train=x"]) == 2
    assert "--split-list does not apply to digits" in capsys.readouterr().err


# ------------------------------------------------------------------ b. 80/20 without a test split

def test_80_20_of_train_without_a_test_split(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", classes=("text", "no_text"), n_per_class=10)
    m = pack(capsys, "imagefolder", src, tmp_path / "out", "--val-fraction", "0.2", "--test-fraction", "0")
    assert list(m["splits"]) == ["train", "val"]
    assert m["splits"]["train"]["class_counts"] == [8, 8] and m["splits"]["val"]["class_counts"] == [2, 2]
    assert m["source"]["test_fraction"] == 0 and m["source"]["val_fraction"] == 0.2


# ------------------------------------------------------------------ c. TinyImageNet: val carved from train

def test_tinyimagenet_official_val_as_test_and_val_carved_from_train(tmp_path, capsys):
    root = write_tinyimagenet(tmp_path / "src", n_classes=3, n_train=5, n_val=2)
    out = tmp_path / "out"
    m = pack(capsys, "tinyimagenet", tmp_path / "src", out, "--official-val", "test", "--val-fraction", "0.2")
    assert m["splits"]["train"]["class_counts"] == [4, 4, 4] and m["splits"]["val"]["class_counts"] == [1, 1, 1]
    assert m["splits"]["test"]["class_counts"] == [2, 2, 2] and m["source"]["official_val"] == "test"
    assert all(k.startswith("val_") for k in keys(out, "test"))
    assert not any(k.startswith("val_") for k in keys(out, "val") | keys(out, "train"))
    assert "test = the official val/" in m["source"]["splits"] and "carved from train" in m["source"]["splits"]
    for s in read_split(out, "test"):
        assert s["jpg"] == (root / json.loads(s["json"])["id"]).read_bytes()


def test_tinyimagenet_official_val_left_out(tmp_path, capsys):
    write_tinyimagenet(tmp_path / "src", n_classes=2, n_train=5, n_val=3)
    m = pack(capsys, "tinyimagenet", tmp_path / "src", tmp_path / "out", "--official-val", "none",
             "--val-fraction", "0.2")
    assert list(m["splits"]) == ["train", "val"] and m["splits"]["val"]["class_counts"] == [1, 1]
    assert m["source"]["official_val_left_out"] == 6 and m["skipped"] == []
    default = pack(capsys, "tinyimagenet", tmp_path / "src", tmp_path / "default")
    assert default["splits"]["val"]["class_counts"] == [3, 3] and "official_val" not in default["source"]


# ------------------------------------------------------------------ b/d. the trainer with these splits

def test_80_20_data_set_trains_with_test_split_null(tmp_path, capsys):
    from conftest import PY, ROOT, run_cmd, train_cmd

    data = tmp_path / "digits"
    run_cmd([PY, "-m", "shards", "pack", "digits", "-", data, "--upscale", "16", "--val-fraction", "0.2",
             "--test-fraction", "0"])
    assert list(load_manifest(data)["splits"]) == ["train", "val"]
    proc = run_cmd(train_cmd(ROOT / "tests/configs/tiny_digits.yaml", f"data.path={data}", f"output.root={tmp_path}",
                             "output.run=r", "data.test_split=null", "trainer.epochs=1", "trainer.max_steps=5"))
    rdir = tmp_path / "runs" / "r"
    assert (rdir / "DONE").exists() and not (rdir / "test_results.json").exists()
    assert "test: " not in proc.stdout and "WARNING" not in proc.stdout
    assert "warnings" not in json.loads((rdir / "run.json").read_text())


# ------------------------------------------------------------------ d. selecting on the test split

def cfg_with(*overrides):
    from imgtrain import config as C

    return C.from_dict({"data": {"path": "x"}}, overrides=list(overrides))


@pytest.mark.parametrize("overrides", [
    ["data.val_split=test", "data.test_split=test"],
    ["data.val_split=test", "data.test_split=null"],
    ["data.val_split=holdout", "data.test_split=holdout"],
])
def test_validating_on_the_test_split_needs_select_on_test(overrides):
    from imgtrain import config as C

    with pytest.raises(C.ConfigError) as e:
        cfg_with(*overrides)
    msg = str(e.value)
    assert "data.val_split" in msg and "data.test_split" in msg and "data.select_on_test=true" in msg
    assert f"[override '{overrides[0]}']" in msg
    assert cfg_with(*overrides, "data.select_on_test=true").data.select_on_test is True


def test_select_on_test_keeps_old_config_hashes():
    from imgtrain import config as C

    assert C.config_hash(cfg_with("data.select_on_test=false")) == C.config_hash(cfg_with())
    assert cfg_with("data.val_split=val").data.selects_on_test() is False
    assert cfg_with("data.test_split=null", "data.val_split=null").data.selects_on_test() is False


def test_select_on_test_run_warns_and_records_it(tmp_path, digits_shards):
    from conftest import ROOT, run_cmd, train_cmd
    from imgtrain.logs import read_summaries

    cfg = ROOT / "tests/configs/tiny_digits.yaml"
    args = [f"data.path={digits_shards}", f"output.root={tmp_path}", "output.run=s004", "trainer.epochs=1",
            "trainer.max_steps=5", "data.val_split=test", "data.test_split=test"]
    refused = run_cmd(train_cmd(cfg, *args), check=False)
    assert refused.returncode != 0 and "data.select_on_test=true" in refused.stdout + refused.stderr
    proc = run_cmd(train_cmd(cfg, *args, "data.select_on_test=true"))
    warning = [line for line in proc.stdout.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and "test split" in warning[0] and "not held out" in warning[0]
    run = json.loads((tmp_path / "runs" / "s004" / "run.json").read_text())
    assert len(run["warnings"]) == 1 and run["warnings"][0] in warning[0]
    assert run["attempts"][-1]["warnings"] == run["warnings"] and list(run)[-1] == "attempts"
    summary = read_summaries(tmp_path).to_pylist()[0]
    assert summary["cfg.data.select_on_test"] is True and summary["cfg.data.val_split"] == "test"
