"""Packing behaviour: determinism across worker counts, split rules, shard limits, atomic
resumable writing (kill -9), --strict and the exit-status-2 cases."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image
from sourcedata import add_bad_files, image_bytes, photos, read_split, write_ava, write_cifar10, write_imagefolder

from shards.cli import main
from shards.manifest import load_manifest
from tests.hooked_pack import STALL_ENV

REPO = Path(__file__).resolve().parent.parent


def pack(capsys, *args) -> dict:
    assert main(["pack", *map(str, args)]) == 0, capsys.readouterr().err
    return load_manifest(args[2])


def shard_hashes(m: dict) -> list[tuple[str, str, int]]:
    return [(s["file"], s["sha256"], s["count"]) for e in m["splits"].values() for s in e["shards"]]


def run_shards(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120, **kw)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    src = tmp_path_factory.mktemp("cifar")
    write_cifar10(src, n_per_batch=8, n_test=10)
    return src


def test_same_output_for_one_and_two_workers(cifar, tmp_path, capsys):
    one = pack(capsys, "cifar10", cifar, tmp_path / "w1", "--shard-size", "6", "--workers", "1")
    two = pack(capsys, "cifar10", cifar, tmp_path / "w2", "--shard-size", "6", "--workers", "2")
    assert len(shard_hashes(one)) >= 7
    assert shard_hashes(one) == shard_hashes(two)
    one.pop("created"), two.pop("created")
    assert one == two  # including image_stats and the split rule text
    for file, digest, _ in shard_hashes(one):
        assert hashlib.sha256((tmp_path / "w2" / file).read_bytes()).hexdigest() == digest


def test_tar_headers_are_deterministic_and_plain(cifar, tmp_path, capsys):
    m = pack(capsys, "cifar10", cifar, tmp_path / "out")
    with tarfile.open(tmp_path / "out" / m["splits"]["train"]["shards"][0]["file"]) as tar:
        members = tar.getmembers()
    assert members and all((t.mtime, t.uid, t.gid, t.uname, t.gname, t.mode) == (0, 0, 0, "", "", 0o644)
                           for t in members)
    names = [t.name for t in members]
    assert names[:3] == [names[0].rsplit(".", 1)[0] + e for e in (".png", ".cls", ".json")]


def test_carved_splits_follow_the_documented_rule(cifar, tmp_path, capsys):
    m = pack(capsys, "cifar10", cifar, tmp_path / "out", "--val-fraction", "0.25", "--seed", "7")
    assert "sha256('7:' + key)" in m["source"]["splits"] and m["source"]["seed"] == 7
    train = read_split(tmp_path / "out", "train") + read_split(tmp_path / "out", "val")
    val_keys = {s["__key__"] for s in read_split(tmp_path / "out", "val")}
    by_class: dict[int, list[str]] = {}
    for s in train:
        by_class.setdefault(int(s["cls"]), []).append(s["__key__"])
    expected = set()
    for keys in by_class.values():
        ranked = sorted(keys, key=lambda k: hashlib.sha256(f"7:{k}".encode()).hexdigest())
        expected |= set(ranked[: int(len(ranked) * 0.25 + 0.5)])
    assert val_keys == expected and len(val_keys) >= 8
    other = pack(capsys, "cifar10", cifar, tmp_path / "seed8", "--val-fraction", "0.25", "--seed", "8")
    assert {s["__key__"] for s in read_split(tmp_path / "seed8", "val")} != val_keys
    assert other["splits"]["val"]["count"] == m["splits"]["val"]["count"]


def test_same_image_never_lands_in_two_splits(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=3, splits=("train", "val"))
    dup = (src / "val" / "cat" / "img_001.jpg").read_bytes()
    (src / "train" / "dog" / "copy_of_val.jpg").write_bytes(dup)
    m = pack(capsys, "imagefolder", src, tmp_path / "out")
    train_images = [s["jpg"] for s in read_split(tmp_path / "out", "train")]
    assert dup not in train_images and m["splits"]["train"]["count"] == 9
    assert any(s["jpg"] == dup for s in read_split(tmp_path / "out", "val"))
    (item,) = m["skipped"]
    assert item["id"] == "train/dog/copy_of_val" and "same image as val/cat/img_001 in val" in item["reason"]


def test_max_shard_bytes_and_shard_size(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=10, size=(48, 64))
    limit = 30 * 1024
    m = pack(capsys, "imagefolder", src, tmp_path / "out", "--max-shard-bytes", "30K", "--shard-size", "4",
             "--val-fraction", "0")
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 30 // 4 and sum(s["count"] for s in shards) == 30
    for s in shards:
        assert s["count"] <= 4 and s["bytes"] <= limit and s["bytes"] == (tmp_path / "out" / s["file"]).stat().st_size


def test_long_and_odd_file_names_become_safe_keys(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=1)
    long_name = "x" * 150 + ".v2.jpg"  # > 100 chars: pax headers; inner dot: webdataset would split there
    for name in (long_name, "café au lait.jpg", "a.b.jpg", "a_b.jpg"):
        (src / "cat" / name).write_bytes(image_bytes(photos(1, seed=len(name))[0], "jpg"))
    m = pack(capsys, "imagefolder", src, tmp_path / "out", "--val-fraction", "0", "--shard-size", "3")
    keys = {s["__key__"]: json.loads(s["json"])["id"] for s in read_split(tmp_path / "out", "train")}
    assert len(keys) == 7 and m["splits"]["train"]["count"] == 7
    assert keys["cat/" + "x" * 150 + "_v2"] == "cat/" + long_name and keys["cat/caf__au_lait"] == "cat/café au lait.jpg"
    assert {keys[k] for k in keys if k.startswith("cat/a_b-")} == {"cat/a.b.jpg", "cat/a_b.jpg"}  # collision resolved


def test_resize_and_format(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=2, size=(40, 60), formats=("jpg", "png"))
    m = pack(capsys, "imagefolder", src, tmp_path / "out", "--resize", "20", "--format", "webp", "--val-fraction", "0")
    samples = read_split(tmp_path / "out", "train")
    assert len(samples) == 6 and m["source"]["resize"] == 20 and m["source"]["format"] == "webp"
    for s in samples:
        img = Image.open(io.BytesIO(s["webp"]))
        assert img.format == "WEBP" and img.size == (30, 20)


def test_strict_turns_a_skip_into_an_error(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=2)
    add_bad_files(src / "cat")
    assert main(["pack", "imagefolder", str(src), str(tmp_path / "out"), "--strict"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("shards: error: ") and "/src/cat/" in err and "--strict" in err
    assert not (tmp_path / "out").exists()
    ava = write_ava(tmp_path / "ava", n=4, bad_rows=True)
    assert main(["pack", "ava", str(ava.root), str(tmp_path / "ava_out"), "--strict"]) == 1
    assert "AVA.txt line 5: 6 columns" in capsys.readouterr().err


def test_exit_status_2_and_nothing_written(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=2)
    cases = [
        (["pack", "imagefolder", str(tmp_path / "nope"), str(tmp_path / "o1")], "no such folder"),
        (["pack", "svhn", str(src), str(tmp_path / "o2")], "unknown source kind 'svhn'"),
        (["pack", "mnist", str(src), str(tmp_path / "o7")], "no train-images-idx3-ubyte"),
        (["pack", "cifar10", str(src), str(tmp_path / "o3")], "cifar-10-batches-py"),
        (["pack", "digits", str(src), str(tmp_path / "o4")], "'-'"),
        (["pack", "imagefolder", str(src), str(tmp_path / "o5"), "--val-fraction", "1.5"], "--val-fraction"),
        (["pack", "imagefolder", str(src), str(tmp_path / "o6"), "--coarse"], "--coarse does not apply"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (argv, err)
        assert not Path(argv[3]).exists()

    # An output folder that holds another data set is left alone.
    pack(capsys, "imagefolder", src, tmp_path / "taken", "--name", "first")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "taken").iterdir()}
    assert main(["pack", "imagefolder", str(src), str(tmp_path / "taken"), "--name", "second"]) == 2
    assert "holds another data set ('first'" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "taken").iterdir()} == before


def test_exit_status_2_from_the_command_line(tmp_path):
    result = run_shards("pack", "imagefolder", tmp_path / "missing", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "no such folder" in result.stderr
    assert not (tmp_path / "out").exists()


def test_repack_keeps_complete_shards_and_replaces_stale_ones(cifar, tmp_path, capsys):
    out = tmp_path / "out"
    first = pack(capsys, "cifar10", cifar, out, "--shard-size", "10")
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = pack(capsys, "cifar10", cifar, out, "--shard-size", "10")
    assert "0 written" in capsys.readouterr().out
    assert shard_hashes(again) == shard_hashes(first)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == stamps  # nothing rewritten
    # other options over a complete data set: refused (runs train on it by its path) unless --replace
    assert main(["pack", "cifar10", str(cifar), str(out), "--shard-size", "25", "--val-fraction", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "other options (val_fraction 0.1 -> 0.2, shard_size 10 -> 25)" in err and "--replace" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == stamps  # untouched
    smaller = pack(capsys, "cifar10", cifar, out, "--shard-size", "25", "--replace")
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(f for f, _, _ in shard_hashes(smaller))


def test_a_second_pack_into_a_folder_in_use_stops_naming_the_first(cifar, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from shards.dirlock import acquire; "
                               f"acquire({str(out / '.pack-lock')!r}); print('held', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["pack", "cifar10", str(cifar), str(out)]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("scan:")]
        assert len(err) == 1 and f"pid {holder.pid}" in err[0] and "is in use by another process" in err[0], err
        assert sorted(p.name for p in out.iterdir()) == [".pack-lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    pack(capsys, "cifar10", cifar, out)  # its holder gone, the lock is stale: taken over
    assert "taking over the lock" in capsys.readouterr().out
    assert not (out / ".pack-lock").exists()


def test_a_full_disk_is_one_line_and_leaves_no_half_file(cifar, tmp_path):
    """RLIMIT_FSIZE makes a write fail with EFBIG as a full disk does with ENOSPC: the same OSError path."""
    import resource

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    out = tmp_path / "out"
    result = run_shards("pack", "cifar10", cifar, out, "--shard-size", "100", preexec_fn=small_files)
    err = [line for line in result.stderr.splitlines() if not line.startswith(("scan:", "write:"))]
    assert result.returncode == 1 and len(err) == 1, result.stderr  # one line, no traceback
    assert err[0].startswith(f"shards: error: {out}/train-000000.tar: File too large"), err
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_kill_9_mid_pack_then_resume_gives_identical_shards(cifar, tmp_path, capsys):
    reference = pack(capsys, "cifar10", cifar, tmp_path / "ref", "--shard-size", "4")
    out = tmp_path / "out"
    args = ["pack", "cifar10", cifar, out, "--shard-size", "4", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, REPO / "tests/hooked_pack.py", *map(str, args)], cwd=REPO,
                            start_new_session=True,
                            env={**os.environ, STALL_ENV: "train-000003.tar"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".train-000003.tar.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(out.glob(".train-000003.tar.tmp-*")), "the pack never reached the stalled shard"
        time.sleep(0.3)  # let the other worker finish a shard or two
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the whole job, workers included
        proc.wait()
    assert not (out / "manifest.json").exists() and not (out / "train-000003.tar").exists()
    complete = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert {"train-000000.tar", "train-000001.tar", "train-000002.tar"} <= set(complete)
    expected = {f: digest for f, digest, _ in shard_hashes(reference)}
    for name in complete:  # whatever carries a final name is a whole, correct shard
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == expected[name]

    result = run_shards(*args)
    assert result.returncode == 0, result.stderr
    assert f"{len(complete)} kept from an earlier run" in result.stdout
    assert "scan:" not in result.stderr  # the scan saved before the kill was reused
    resumed = load_manifest(out)
    assert shard_hashes(resumed) == shard_hashes(reference)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert {name: after[name] for name in complete} == complete  # not rewritten
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temp files and scan state are gone


def test_an_empty_class_folder_is_a_warning(tmp_path, capsys):
    src = write_imagefolder(tmp_path / "src", n_per_class=2)
    (src / "zebra").mkdir()
    m = pack(capsys, "imagefolder", src, tmp_path / "out")
    err = capsys.readouterr().err
    assert "zebra" in m["classes"] and "warning: class 'zebra' has no sample in any split" in err, err
    assert "warning" not in "".join(line for line in err.splitlines() if "zebra" not in line)
