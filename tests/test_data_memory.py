"""data.cache=memory (issue 18): the cached arrays equal the per-sample path's decode, the training order and resume
are those of the shard path, a changed or damaged cache is rebuilt, unsupported augmentation falls back."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cmd, train_cmd
from imgtrain import config as C
from imgtrain import tasks
from imgtrain.data import build_split, dataset_info
from imgtrain.data.loader import _seeded
from imgtrain.data.memory import (MemoryFeed, MemorySplit, _mix, batch_augment, batch_cutout, open_cache,
                                  sample_hashes, use_memory)
from imgtrain.data.transforms import Cutout, cutout_fill
from imgtrain.data.order import TrainPlan
from imgtrain.engine.dist import DistEnv

CFG = ROOT / "tests/configs/tiny_digits.yaml"
MEAN, STD = (0.5,), (0.5,)


def cfg_for(data, *extra):
    return C.load(CFG, [f"data.path={data}", "data.cache=memory", *extra])


def task_of(cfg, info):
    return tasks.build(cfg.task, info.num_outputs, info.class_counts, info.class_names, cfg.model.num_classes)


def scratch_env(tmp_path):
    return {"TMPDIR": str(tmp_path / "scratch"), "SLURM_TMPDIR": ""}


@pytest.mark.parametrize("split, train", [("train", True), ("val", False), ("test", False)])
def test_cached_array_equals_the_per_sample_decode(digits_shards, tmp_path, split, train):
    cfg = cfg_for(digits_shards)
    info = dataset_info(cfg)
    task = task_of(cfg, info)
    images, meta, _ = open_cache(cfg, info, split, train=train, mean=MEAN, std=STD, log=lambda m: None, root=tmp_path)
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape[1:] == (16, 16, cfg.data.in_chans)
    ref = build_split(cfg, info, split, task, train=False, mean=MEAN, std=STD)  # the evaluation transform
    assert len(images) == len(ref)
    mem = MemorySplit(images, meta, ref, task.target_from_sample, MEAN, STD)
    for i in range(len(ref)):
        s = ref[(0, i)]
        assert torch.equal(torch.from_numpy(np.array(images[i])).permute(2, 0, 1), s.image), i
        assert torch.equal(mem.targets[i], s.target)
    b = next(mem.eval_batches(0, 1, 64))
    assert b["index"].tolist() == list(range(64)) and b["image"].shape == (64, cfg.data.in_chans, 16, 16)


def test_sample_draws_depend_on_the_index_only():
    idx = np.array([5, 0, 123456789, 7], dtype=np.int64)
    h = sample_hashes(3, 2, idx)
    assert [int(v) for v in sample_hashes(3, 2, idx[::-1])] == [int(v) for v in h[::-1]]
    assert int(sample_hashes(3, 2, idx[2:3])[0]) == int(h[2])
    assert int(sample_hashes(3, 3, idx)[0]) != int(h[0])
    assert _mix(1) != 1  # splitmix is the loader's
    x = torch.arange(4 * 2 * 16 * 16, dtype=torch.int64).remainder(251).to(torch.uint8).view(4, 2, 16, 16)
    out = batch_augment(x, idx, seed=3, epoch=2, pad=2, hflip=0.5)
    one = torch.cat([batch_augment(x[i:i + 1], idx[i:i + 1], seed=3, epoch=2, pad=2, hflip=0.5) for i in range(4)])
    assert torch.equal(out, one) and out.shape == x.shape
    # each output is a crop of the reflect-padded input, maybe flipped
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for i in range(4):
        crops = [padded[i, :, dy:dy + 16, dx:dx + 16] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i].float(), c) or torch.equal(out[i].float(), c.flip(-1)) for c in crops)


def _changed_box(before: torch.Tensor, after: torch.Tensor):
    """(rows, cols) spanned by the pixels `after` changed in a CHW image, or None."""
    diff = (before != after).any(0)
    if not diff.any():
        return None
    rows, cols = diff.any(1).nonzero().flatten(), diff.any(0).nonzero().flatten()
    return (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)


@pytest.mark.parametrize("form", ["batch", "per-sample"])
def test_cutout_is_a_clipped_square_of_the_mean_colour_drawn_from_the_index(form):
    size, n = 6, 64
    mean = (0.25, 0.5, 0.75)
    fill = cutout_fill(mean)
    assert fill.tolist() == [64, 128, 191]
    x = torch.full((n, 3, 16, 16), 7, dtype=torch.uint8)
    idx = np.arange(100, 100 + n, dtype=np.int64)
    if form == "batch":
        out = batch_cutout(x, idx, seed=1, epoch=0, size=size, fill=fill)
        one = torch.cat([batch_cutout(x[i:i + 1], idx[i:i + 1], seed=1, epoch=0, size=size, fill=fill)
                         for i in range(n)])
        assert torch.equal(out, one)  # a sample's square depends on its index only, not on its batch
        again = batch_cutout(x, idx, seed=1, epoch=1, size=size, fill=fill)
    else:
        cut = Cutout(size, mean)
        def apply(epoch):  # noqa: E306
            imgs = []
            for i, j in enumerate(idx):
                with _seeded(1, epoch, int(j)):
                    imgs.append(cut(x[i]))
            return torch.stack(imgs)
        out, again = apply(0), apply(1)
        assert torch.equal(out, apply(0))
    assert torch.equal(x, torch.full_like(x, 7))  # the input is not written to
    clipped = 0
    for i in range(n):
        box = _changed_box(x[i], out[i])
        assert box is not None
        (r0, r1), (c0, c1) = box
        assert 1 <= r1 - r0 <= size and 1 <= c1 - c0 <= size
        assert torch.equal(out[i, :, r0:r1, c0:c1], fill.view(3, 1, 1).expand(3, r1 - r0, c1 - c0))
        assert int((out[i] != x[i]).any(0).sum()) == (r1 - r0) * (c1 - c0)  # a full rectangle, nothing else
        clipped += (r1 - r0 < size) or (c1 - c0 < size)
    assert 0 < clipped < n  # centres anywhere: some squares cross the border, most do not
    assert not torch.equal(out, again)  # another epoch, other squares


def test_cutout_needs_the_simple_augment_pipeline(digits_shards):
    with pytest.raises(C.ConfigError, match="data.cutout=4.*simple_augment.*re_prob"):
        cfg_for(digits_shards, "data.simple_augment=false", "data.cutout=4")
    with pytest.raises(C.ConfigError, match="data.cutout"):
        cfg_for(digits_shards, "data.cutout=-1")


def test_ddp_ranks_get_the_single_process_batches(digits_shards, tmp_path):
    cfg = cfg_for(digits_shards, "data.hflip=0.5")
    info = dataset_info(cfg)
    task = task_of(cfg, info)
    images, meta, ds = open_cache(cfg, info, "train", train=True, mean=MEAN, std=STD, log=lambda m: None,
                                  root=tmp_path)
    mem = MemorySplit(images, meta, ds, task.target_from_sample, MEAN, STD)
    single = list(MemoryFeed(mem, cfg, DistEnv())(1, TrainPlan(len(mem), 16, 1, start=32)))
    ranks = [list(MemoryFeed(mem, cfg, DistEnv(rank=r, world=2))(1, TrainPlan(len(mem), 8, 2, start=32)))
             for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) > 0
    for s, a, b in zip(single, *ranks):
        assert torch.equal(s["index"], torch.cat([a["index"], b["index"]]))
        assert torch.equal(s["image"], torch.cat([a["image"], b["image"]]))
        assert torch.equal(s["target"], torch.cat([a["target"], b["target"]]))


def test_changed_manifest_and_truncated_file_are_rebuilt(digits_shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_shards, data)
    cfg = cfg_for(data)
    logs = []
    first, _, _ = open_cache(cfg, dataset_info(cfg), "val", train=False, mean=MEAN, std=STD, log=logs.append,
                             root=tmp_path / "c")
    first = np.array(first)
    again, _, _ = open_cache(cfg, dataset_info(cfg), "val", train=False, mean=MEAN, std=STD, log=logs.append,
                             root=tmp_path / "c")
    assert len(logs) == 1 and "not built yet" in logs[0]  # the second open reuses the file
    path = next((tmp_path / "c").glob("*/val-*.npy"))
    with open(path, "r+b") as f:  # a short file (an interrupted copy, a full disk)
        f.truncate(path.stat().st_size - 100)
    again, _, _ = open_cache(cfg, dataset_info(cfg), "val", train=False, mean=MEAN, std=STD, log=logs.append,
                             root=tmp_path / "c")
    assert len(logs) == 2 and "damaged" in logs[1] and np.array_equal(np.array(again), first)
    with open(path, "r+b") as f:  # same size, other bytes
        f.seek(-5, 2)
        f.write(b"\xff\x00\xff\x00\xff")
    open_cache(cfg, dataset_info(cfg), "val", train=False, mean=MEAN, std=STD, log=logs.append, root=tmp_path / "c")
    assert len(logs) == 3 and "checksum" in logs[2]
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64  # the data set changed
    (data / "manifest.json").write_text(json.dumps(manifest))
    open_cache(cfg, dataset_info(cfg), "val", train=False, mean=MEAN, std=STD, log=logs.append, root=tmp_path / "c")
    assert len(logs) == 4 and "decoding split 'val'" in logs[3]
    assert len(list((tmp_path / "c").glob("*/val-*.npy"))) == 2  # another key, another folder


def test_a_shard_changed_on_disk_under_the_same_manifest_gets_its_own_array(digits_shards, tmp_path):
    """A damaged or replaced shard file with an unchanged manifest.json: the intact data's array is not reused
    (it would hide the damage the per-sample path reports), and the intact copy keeps its own."""
    intact, damaged = tmp_path / "intact", tmp_path / "damaged"
    shutil.copytree(digits_shards, intact)
    shutil.copytree(digits_shards, damaged)
    shard = damaged / "val-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    opened = {}
    for name, data in (("intact", intact), ("damaged", damaged), ("intact again", intact)):
        cfg = cfg_for(data)
        logs = []
        _, meta, _ = open_cache(cfg, dataset_info(cfg), "val", train=False, mean=MEAN, std=STD, log=logs.append,
                                root=tmp_path / "c")
        opened[name] = (len(logs), len(meta["bad"]))
    assert opened["intact"] == (1, 0) and opened["intact again"] == (0, 0)  # built once, then reused
    assert opened["damaged"][0] == 1 and opened["damaged"][1] > 10  # its own build, which sees the damage
    assert len(list((tmp_path / "c").glob("*/val-*.npy"))) == 2


def test_unsupported_augmentation_falls_back_with_one_log_line(digits_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    cfg = cfg_for(digits_shards, "data.simple_augment=false", "data.color_jitter=0.4")
    info = dataset_info(cfg)
    task = task_of(cfg, info)
    split = lambda name, train: build_split(cfg, info, name, task, train=train, mean=MEAN, std=STD)  # noqa: E731
    logs = []
    feed, val, test = use_memory(cfg, info, task, DistEnv(), split("train", True), split("val", False),
                                 split("test", False), MEAN, STD, log=logs.append)
    fallback = [m for m in logs if "per-sample path" in m]
    assert feed is None and len(fallback) == 1 and "data.color_jitter=0.4" in fallback[0]
    assert isinstance(val, MemorySplit) and isinstance(test, MemorySplit)
    assert not list(tmp_path.glob("imgtrain-cache/*/train-*.npy"))  # nothing decoded for training


def trace_lines(path):
    return [line.split() for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_memory_run_trains_on_the_shard_order_and_results(digits_shards, tmp_path):
    """Augmentation off (scale 1, ratio 1, no flip; the 16 px digits resize to themselves): the same samples per
    step as data.cache=none, and since the pixels are the same too, the same weights and metrics."""
    plain = ["trainer.epochs=1", "data.simple_augment=false", "data.scale=[1.0,1.0]", "data.ratio=[1.0,1.0]",
             "data.hflip=0.0", "data.interpolation=bilinear", "data.crop_pct=1.0"]
    traces = {}
    for cache in ("none", "memory"):
        trace = tmp_path / f"trace-{cache}"
        run_cmd(train_cmd(CFG, f"data.path={digits_shards}", f"output.root={tmp_path / cache}", "output.run=r",
                          *([] if cache == "none" else [f"data.cache={cache}"]), *plain),
                env={**scratch_env(tmp_path), "IMGTRAIN_TEST_TRACE_SAMPLES": str(trace)})
        traces[cache] = trace_lines(tmp_path / f"trace-{cache}.rank0")
    assert traces["none"] == traces["memory"] and len(traces["none"]) > 50
    from test_fault_tolerance import comparable_metrics, same_weights
    assert same_weights(tmp_path / "none/runs/r", tmp_path / "memory/runs/r")
    assert comparable_metrics(tmp_path / "none/runs/r") == comparable_metrics(tmp_path / "memory/runs/r")
    assert list((tmp_path / "scratch/imgtrain-cache").glob("*/train-16-c3-*.npy"))


@pytest.mark.slow
def test_memory_signal_then_resume_is_bit_identical(digits_shards, tmp_path):
    args = lambda root: [f"data.path={digits_shards}", f"output.root={root}", "output.run=ft",  # noqa: E731
                         "trainer.epochs=1", "data.cache=memory", "data.hflip=0.5", "data.cutout=6",
                         "trainer.log_every_steps=7"]  # the stop (step 30) falls inside a log window (28-35)
    straight, resumed = tmp_path / "a", tmp_path / "b"
    env = scratch_env(tmp_path)
    run_cmd(train_cmd(CFG, *args(straight)), env=env)
    stopped = run_cmd(train_cmd(CFG, *args(resumed)), env={**env, "IMGTRAIN_TEST_SIGNAL_AT_STEP": "30"}, check=False)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert torch.load(resumed / "runs/ft/checkpoints/last.pt", weights_only=True)["state"]["step"] == 30
    run_cmd(train_cmd(CFG, *args(resumed)), env=env)
    from test_fault_tolerance import attempts, comparable_metrics, same_weights
    assert same_weights(straight / "runs/ft", resumed / "runs/ft")
    assert comparable_metrics(straight / "runs/ft") == comparable_metrics(resumed / "runs/ft")
    assert attempts(resumed / "runs/ft") == ["STOPPED", "DONE"]


@pytest.mark.multiproc
@pytest.mark.slow
def test_memory_ddp_ranks_train_on_the_single_process_samples(digits_shards, tmp_path):
    """2 ranks (both open the cache under its file lock) train per step on the samples one process trains on."""
    common = [f"data.path={digits_shards}", "output.run=r", "trainer.epochs=1", "data.cache=memory",
              "data.hflip=0.5", "trainer.max_steps=20"]
    env = scratch_env(tmp_path)
    run_cmd(train_cmd(CFG, *common, f"output.root={tmp_path / 'one'}", "data.batch_size=16"),
            env={**env, "IMGTRAIN_TEST_TRACE_SAMPLES": str(tmp_path / "t1")})
    run_cmd(train_cmd(CFG, *common, f"output.root={tmp_path / 'two'}", "data.batch_size=8", nproc=2),
            env={**env, "IMGTRAIN_TEST_TRACE_SAMPLES": str(tmp_path / "t2")})
    one = trace_lines(tmp_path / "t1.rank0")
    r0, r1 = trace_lines(tmp_path / "t2.rank0"), trace_lines(tmp_path / "t2.rank1")
    assert len(one) == len(r0) == len(r1) == 20
    assert one == [a + b[1:] for a, b in zip(r0, r1)]


@pytest.mark.slow
def test_memory_path_counts_bad_samples_as_the_shard_path_does(digits_shards, tmp_path):
    from imgtrain.logs import read_metrics
    from test_fault_tolerance import _truncate_first_train_shard
    data = tmp_path / "data"
    _truncate_first_train_shard(digits_shards, data)
    skipped = {}
    for cache in ("none", "memory"):
        proc = run_cmd(train_cmd(CFG, f"data.path={data}", f"output.root={tmp_path / cache}", "output.run=r",
                                 "trainer.epochs=1", "data.max_bad_fraction=0.5",
                                 *([] if cache == "none" else ["data.cache=memory"])), env=scratch_env(tmp_path))
        assert "skipped training sample train:" in proc.stderr and "damaged shard train-000000.tar" in proc.stderr
        assert not re.search(r"train:\d+: train:", proc.stderr)  # named once, as the shard path names it
        rows = read_metrics(tmp_path / cache / "runs/r").to_pylist()
        skipped[cache] = [(r["step"], r["value"]) for r in rows if r["split"] == "train" and r["metric"] == "skipped"]
    assert skipped["none"] == skipped["memory"] and 100 < skipped["none"][-1][1] < 300


def test_no_scratch_space_names_the_path_and_the_keys(digits_shards, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SLURM_TMPDIR", str(blocker))
    cfg = cfg_for(digits_shards)
    with pytest.raises(RuntimeError) as e:
        open_cache(cfg, dataset_info(cfg), "val", train=False, mean=MEAN, std=STD, log=lambda m: None)
    assert str(blocker) in str(e.value) and "$SLURM_TMPDIR" in str(e.value) and "data.cache=none" in str(e.value)


def test_auto_caches_what_fits_and_streams_the_rest_saying_why(digits_shards, tmp_path, monkeypatch):
    """data.cache=auto: memory when the splits fit data.cache_max_gb and the augmentation has a per-batch form;
    else the per-sample path with one log line; data.cache=memory over the budget streams too, saying so."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)

    def hook(*extra):
        cfg = C.load(CFG, [f"data.path={digits_shards}", *extra])
        info = dataset_info(cfg)
        task = task_of(cfg, info)
        split = lambda name, train: build_split(cfg, info, name, task, train=train, mean=MEAN, std=STD)  # noqa: E731
        logs = []
        out = use_memory(cfg, info, task, DistEnv(), split("train", True), split("val", False), split("test", False),
                         MEAN, STD, log=logs.append)
        return out, logs

    (feed, val, test), logs = hook("data.cache=auto")
    assert isinstance(feed, MemoryFeed) and isinstance(val, MemorySplit) and any("cached in memory" in m for m in logs)
    (feed, val, test), logs = hook("data.cache=auto", "data.cache_max_gb=0.0001")  # ~0.1 MiB: the 1,797 digits need 1.4
    assert feed is None and not isinstance(val, MemorySplit) and len(logs) == 1
    assert "over data.cache_max_gb=0.0001" in logs[0] and "per-sample path" in logs[0]
    (feed, val, test), logs = hook("data.cache=memory", "data.cache_max_gb=0.0001")
    assert feed is None and not isinstance(test, MemorySplit) and "data.cache=memory: the per-sample path" in logs[0]
    (feed, val, test), logs = hook("data.cache=auto", "data.simple_augment=false", "data.color_jitter=0.4")
    assert feed is None and not isinstance(val, MemorySplit) and "data.color_jitter=0.4" in logs[0]
    # a full scratch disk: the arrays already built still count as room, a new size does not fit
    import collections
    from imgtrain.data import memory
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(memory.shutil, "disk_usage", lambda p: usage(10 ** 12, 10 ** 12 - 1000, 1000))
    (feed, val, test), logs = hook("data.cache=auto")
    assert isinstance(feed, MemoryFeed) and isinstance(test, MemorySplit), logs
    (feed, val, test), logs = hook("data.cache=auto", "data.img_size=20")
    assert feed is None and "GiB free" in logs[0] and "$TMPDIR" in logs[0]
