"""imgtrain.logs: run directory bookkeeping, Parquet metric parts and their reader, progress output."""
from __future__ import annotations

import io
import json
import os
import re
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgtrain import config as C
from imgtrain.logs import (
    DONE,
    FAILED,
    INCOMPLETE,
    NEW,
    SCHEMA,
    MetricWriter,
    Progress,
    UnreadablePartWarning,
    atomic_write_text,
    clear_markers,
    compact_metrics,
    end_attempt,
    failure_reason,
    mark_done,
    mark_failed,
    read_metrics,
    read_run,
    read_status,
    read_summaries,
    read_summary_row,
    resolve_root,
    run_dir,
    start_attempt,
    write_summary,
)


def rows(table: pa.Table) -> list[tuple]:
    d = table.to_pydict()
    return list(zip(*d.values()))


def part_names(rdir) -> list[str]:
    return sorted(os.listdir(rdir / "metrics"))


# --------------------------------------------------------------------------- schema and writer

def test_schema_is_the_design_contract(tmp_path):
    expected = [
        ("run_id", pa.string(), False),
        ("sweep", pa.string(), True),
        ("attempt", pa.int32(), False),
        ("epoch", pa.int32(), False),
        ("step", pa.int64(), False),
        ("split", pa.string(), False),
        ("metric", pa.string(), False),
        ("value", pa.float64(), False),
        ("time", pa.timestamp("ms", tz="UTC"), False),
    ]
    assert [(f.name, f.type, f.nullable) for f in SCHEMA] == expected

    w = MetricWriter(tmp_path, "r1", None, 0)
    w.log("train", "loss", np.float32(0.5), epoch=0, step=1)
    before = datetime.now(timezone.utc)
    path = w.flush()
    assert path.name == "part-a000-000000.parquet"
    assert pq.read_schema(path).equals(SCHEMA)  # nullability included
    t = pq.read_table(path)
    assert t.column("sweep").null_count == 1
    stamp = t.column("time")[0].as_py()
    assert stamp.tzinfo is not None and abs((stamp - before).total_seconds()) < 5
    # read back through the reader: same schema, exact values
    back = read_metrics(tmp_path)
    assert back.schema.equals(SCHEMA)
    assert rows(back.drop_columns("time")) == [("r1", None, 0, 0, 1, "train", "loss", 0.5)]


def test_highest_attempt_wins_without_gaps_or_duplicates(tmp_path):
    rdir = run_dir(tmp_path, "r1")
    # attempt 0: steps 0..9, flushed at the "checkpoint" after step 5 and when killed after 9
    w0 = MetricWriter(rdir, "r1", "sw", 0)
    for step in range(10):
        w0.log_many("train", {"loss": 100 + step, "lr": 0.1}, epoch=step // 5, step=step)
        if step == 5:
            w0.flush()
        if step % 5 == 4:
            w0.log("val", "acc1", 0.5 + step, epoch=step // 5, step=step)
    w0.close()
    # attempt 1 resumes from the checkpoint at step 5: replays 6..9 with new values, goes on to 14
    w1 = MetricWriter(rdir, "r1", "sw", 1)
    for step in range(6, 15):
        w1.log_many("train", {"loss": 200 + step, "lr": 0.1}, epoch=step // 5, step=step)
        if step % 5 == 4:
            w1.log("val", "acc1", 0.7 + step, epoch=step // 5, step=step)
    # same key twice within one attempt: the later row wins
    w1.log("train", "loss", -1.0, epoch=2, step=14)
    w1.close()
    assert part_names(rdir) == ["part-a000-000000.parquet", "part-a000-000001.parquet", "part-a001-000000.parquet"]

    t = read_metrics(rdir)
    got = {(r["split"], r["metric"], r["step"]): (r["attempt"], r["value"]) for r in t.to_pylist()}
    assert len(got) == t.num_rows  # no duplicates
    loss = [(s, got[("train", "loss", s)]) for s in range(15)]
    assert [s for s, _ in loss] == list(range(15))  # no gaps
    assert all(v == (0, 100 + s) for s, v in loss[:6])
    assert all(v == (1, 200 + s) for s, v in loss[6:14])
    assert got[("train", "loss", 14)] == (1, -1.0)
    assert got[("val", "acc1", 4)] == (0, 4.5)
    assert got[("val", "acc1", 9)] == (1, pytest.approx(9.7))
    assert got[("val", "acc1", 14)] == (1, pytest.approx(14.7))
    assert t.num_rows == 15 + 15 + 3
    # sorted by run_id, split, metric, step
    keys = list(zip(*(t.column(c).to_pylist() for c in ("run_id", "split", "metric", "step"))))
    assert keys == sorted(keys)


def test_later_part_of_the_same_attempt_wins_a_tie(tmp_path):
    w = MetricWriter(tmp_path, "r", None, 2)
    w.log("val", "acc1", 1.0, epoch=0, step=10)
    w.flush()
    w.log("val", "acc1", 2.0, epoch=0, step=10)
    w.flush()
    t = read_metrics(tmp_path)
    assert t.column("value").to_pylist() == [2.0]


def test_flush_is_atomic_and_temp_files_are_ignored(tmp_path):
    w = MetricWriter(tmp_path, "r1", None, 0)
    assert w.flush() is None  # empty buffer: nothing written
    assert part_names(tmp_path) == []
    w.log("train", "loss", 1.0, epoch=0, step=0)
    w.flush()
    assert part_names(tmp_path) == ["part-a000-000000.parquet"]  # no temp left behind
    assert len(w) == 0

    # what a writer killed mid-flush leaves: a temp name, maybe whole, maybe torn
    whole = pa.Table.from_pylist(
        [dict(run_id="r1", sweep=None, attempt=9, epoch=0, step=0, split="train", metric="loss", value=99.0,
              time=datetime.now(timezone.utc))],
        schema=SCHEMA,
    )
    pq.write_table(whole, tmp_path / "metrics" / ".part-a009-000000.parquet.123-abcd.tmp")
    (tmp_path / "metrics" / ".part-a000-000001.parquet.124-ef01.tmp").write_bytes(b"PAR1 torn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # temp files must not even warn
        t = read_metrics(tmp_path)
    assert rows(t.select(["attempt", "value"])) == [(0, 1.0)]
    # a new writer's seq ignores temp names too
    assert MetricWriter(tmp_path, "r1", None, 0).flush() is None


def test_torn_part_is_skipped_with_a_warning_naming_it(tmp_path):
    w = MetricWriter(tmp_path, "r1", None, 0)
    for step in range(3):
        w.log_many("train", {"loss": float(step), "acc1": 0.1 * step}, epoch=0, step=step)
        w.flush()
    torn = tmp_path / "metrics" / "part-a000-000001.parquet"
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    with pytest.warns(UnreadablePartWarning, match=re.escape(str(torn))):
        t = read_metrics(tmp_path)
    assert sorted(set(t.column("step").to_pylist())) == [0, 2]
    assert t.num_rows == 4


def test_parts_from_other_writers(tmp_path):
    """Nullable columns and a missing sweep column are read; a missing required column is skipped."""
    (tmp_path / "metrics").mkdir()
    t = pa.table({"run_id": ["x"], "attempt": pa.array([0], pa.int32()), "epoch": pa.array([0], pa.int32()),
                  "step": [3], "split": ["val"], "metric": ["acc1"], "value": [0.25],
                  "time": pa.array([0], pa.timestamp("ms", tz="UTC"))})
    pq.write_table(t, tmp_path / "metrics" / "foreign-1.parquet")
    pq.write_table(t.drop_columns(["step"]), tmp_path / "metrics" / "foreign-2.parquet")
    with pytest.warns(UnreadablePartWarning, match=r"foreign-2\.parquet: ValueError: missing columns \['step'\]"):
        got = read_metrics(tmp_path)
    assert got.schema.equals(SCHEMA)
    assert rows(got.drop_columns("time")) == [("x", None, 0, 0, 3, "val", "acc1", 0.25)]


def test_seq_continues_for_a_new_writer_of_the_same_attempt(tmp_path):
    w = MetricWriter(tmp_path, "r1", None, 0)
    w.log("train", "loss", 1.0, epoch=0, step=0)
    first = w.flush()
    first_bytes = first.read_bytes()
    w.log("train", "loss", 2.0, epoch=0, step=1)
    w.close()
    w2 = MetricWriter(tmp_path, "r1", None, 0)  # e.g. the engine rebuilt its logger
    w2.log("train", "loss", 3.0, epoch=0, step=2)
    w2.close()
    w3 = MetricWriter(tmp_path, "r1", None, 1)  # a new attempt numbers its parts from 0
    w3.log("train", "loss", 4.0, epoch=0, step=3)
    w3.close()
    assert part_names(tmp_path) == [
        "part-a000-000000.parquet", "part-a000-000001.parquet", "part-a000-000002.parquet", "part-a001-000000.parquet",
    ]
    assert first.read_bytes() == first_bytes  # never rewritten
    assert read_metrics(tmp_path).column("value").to_pylist() == [1.0, 2.0, 3.0, 4.0]


def test_auto_flush_by_rows(tmp_path):
    w = MetricWriter(tmp_path, "r1", None, 0, flush_rows=4)
    for step in range(10):
        w.log("train", "loss", step, epoch=0, step=step)
    assert part_names(tmp_path) == ["part-a000-000000.parquet", "part-a000-000001.parquet"]
    assert len(w) == 2
    w.close()
    assert read_metrics(tmp_path).num_rows == 10


# --------------------------------------------------------------------------- trees of runs

def _write_run(root, run_id, sweep, n_steps, offset=0.0):
    with MetricWriter(run_dir(root, run_id), run_id, sweep, 0) as w:
        for step in range(n_steps):
            w.log_many("train", {"loss": offset + step, "lr": 0.01}, epoch=0, step=step)
            w.log("val", "acc1", offset + step / 10, epoch=0, step=step)


def test_read_a_tree_of_runs_and_filter(tmp_path):
    _write_run(tmp_path, "b-run", "s1", 3, 10)
    _write_run(tmp_path, "a-run", "s1", 2, 20)
    _write_run(tmp_path, "c-run", "s2", 4, 30)
    (tmp_path / "runs" / "empty-run").mkdir()  # a run dir created before any metric
    full = read_metrics(tmp_path)
    assert full.num_rows == 3 * (3 + 2 + 4)
    assert full.column("run_id").to_pylist() == ["a-run"] * 6 + ["b-run"] * 9 + ["c-run"] * 12
    assert read_metrics(tmp_path / "runs").equals(full)  # the runs/ dir itself

    one = read_metrics(run_dir(tmp_path, "c-run"))  # a single run dir
    assert set(one.column("run_id").to_pylist()) == {"c-run"} and one.num_rows == 12

    s1 = read_metrics(tmp_path, sweep="s1")
    assert set(s1.column("run_id").to_pylist()) == {"a-run", "b-run"} and s1.num_rows == 15
    assert read_metrics(tmp_path, sweep=["s1", "s2"]).num_rows == full.num_rows
    assert read_metrics(tmp_path, sweep="nope").num_rows == 0

    picked = read_metrics(tmp_path, run_id=["c-run", "a-run"], columns=["run_id", "metric", "step", "value"])
    assert picked.column_names == ["run_id", "metric", "step", "value"]
    assert picked.schema.field("step").type == pa.int64()
    assert rows(picked.filter(pa.compute.equal(picked["metric"], "loss")))[:3] == [
        ("a-run", "loss", 0, 20.0), ("a-run", "loss", 1, 21.0), ("c-run", "loss", 0, 30.0),
    ]
    with pytest.raises(ValueError, match="unknown metric columns"):
        read_metrics(tmp_path, columns=["nope"])
    empty = read_metrics(tmp_path / "runs" / "empty-run")
    assert empty.num_rows == 0 and empty.schema.equals(SCHEMA)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing")


def test_scale_1000_runs(tmp_path):
    """1,000 runs x 100 steps x 10 metrics, one part per run (timing is in the report, not asserted)."""
    n_steps, metrics = 100, [f"m{i}" for i in range(10)]
    n = n_steps * len(metrics)
    stamp = pa.array(np.full(n, 1_700_000_000_000, np.int64), pa.timestamp("ms", tz="UTC"))
    template = pa.Table.from_arrays(
        [
            pa.nulls(n, pa.string()),
            pa.array(["sw"] * n),
            pa.array(np.zeros(n, np.int32)),
            pa.array(np.repeat(np.arange(n_steps, dtype=np.int32) // 10, len(metrics))),
            pa.array(np.repeat(np.arange(n_steps, dtype=np.int64), len(metrics))),
            pa.array(["train"] * n),
            pa.array(metrics * n_steps),
            pa.array(np.arange(n, dtype=np.float64)),
            stamp,
        ],
        schema=SCHEMA,
    )
    for r in range(1000):
        rid = f"run{r:04d}"
        part = template.set_column(0, SCHEMA.field("run_id"), pa.array([rid] * n))
        (tmp_path / "runs" / rid / "metrics").mkdir(parents=True)
        pq.write_table(part, tmp_path / "runs" / rid / "metrics" / "part-a000-000000.parquet")
    t0 = time.perf_counter()
    t = read_metrics(tmp_path)
    elapsed = time.perf_counter() - t0
    assert t.num_rows == 1000 * n
    assert t.column("run_id")[0].as_py() == "run0000" and t.column("run_id")[-1].as_py() == "run0999"
    assert t.column("metric")[0].as_py() == "m0" and t.column("step")[n_steps - 1].as_py() == n_steps - 1
    print(f"read_metrics 1000 runs x {n} rows: {elapsed:.2f}s")


# --------------------------------------------------------------------------- compaction

def _resumed_run(rdir):
    """Two attempts, the second replaying steps, and a tie within one attempt across two parts."""
    w0 = MetricWriter(rdir, "r1", "sw", 0)
    for step in range(8):
        w0.log_many("train", {"loss": 100 + step, "lr": 0.1}, epoch=step // 4, step=step)
        if step % 3 == 2:
            w0.flush()
    w0.log("val", "acc1", 0.25, epoch=1, step=7)  # overwritten by the next part of the same attempt
    w0.flush()
    w0.log("val", "acc1", 0.5, epoch=1, step=7)
    w0.close()
    with MetricWriter(rdir, "r1", "sw", 1) as w1:  # resumed from step 5: replays 6, 7
        for step in range(6, 10):
            w1.log("train", "loss", 200 + step, epoch=step // 4, step=step)


def test_compaction_keeps_exactly_what_the_reader_reads(tmp_path):
    rdir = run_dir(tmp_path, "r1")
    _resumed_run(rdir)
    before = read_metrics(rdir)
    assert len(part_names(rdir)) == 5
    path = compact_metrics(rdir)
    assert path.name == "compact-a001-000000.parquet" and part_names(rdir) == [path.name]
    assert read_metrics(rdir).equals(before)
    # any Parquet reader gets the contract's schema and the deduplicated rows, in read_metrics' order
    direct = pq.read_table(path)
    assert direct.schema.equals(SCHEMA) and direct.replace_schema_metadata(None).equals(before)
    assert compact_metrics(rdir) is None and part_names(rdir) == [path.name]  # nothing left to merge
    assert compact_metrics(run_dir(tmp_path, "never-logged")) is None


def test_a_crash_between_compacting_and_removing_leaves_duplicates_the_reader_removes(tmp_path):
    rdir = run_dir(tmp_path, "r1")
    _resumed_run(rdir)
    before = read_metrics(rdir)
    saved = {n: (rdir / "metrics" / n).read_bytes() for n in part_names(rdir)}
    compacted = compact_metrics(rdir).name
    # what a crash leaves: the compacted file (written atomically first) beside the parts not yet removed,
    # which are removed in read order, so always the newest ones; and possibly a torn temp file
    (rdir / "metrics" / f".{compacted}.99-beef.tmp").write_bytes(b"PAR1 torn")
    names = sorted(saved)
    for left in (names, names[2:], names[-1:]):
        for n in names:
            (rdir / "metrics" / n).unlink(missing_ok=True)
        for n in left:
            (rdir / "metrics" / n).write_bytes(saved[n])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert read_metrics(rdir).equals(before), left
    # compacting again finishes the job: one file, the same rows
    again = compact_metrics(rdir)
    assert part_names(rdir) == sorted([again.name, f".{compacted}.99-beef.tmp"]) and again.name != compacted
    assert read_metrics(rdir).equals(before)


def test_a_resumed_run_after_compaction(tmp_path):
    """DONE removed by hand, the run resumed: a higher attempt's parts beside the compacted file."""
    rdir = run_dir(tmp_path, "r1")
    _resumed_run(rdir)
    first = compact_metrics(rdir)
    with MetricWriter(rdir, "r1", "sw", 2) as w:
        w.log("train", "loss", -9.0, epoch=2, step=9)  # replays the last step
        w.log("train", "loss", -10.0, epoch=2, step=10)
    t = read_metrics(rdir)
    loss = t.filter(pa.compute.equal(t["metric"], "loss"))
    assert loss.column("value").to_pylist()[-3:] == [208.0, -9.0, -10.0]
    assert loss.column("attempt").to_pylist()[-3:] == [1, 2, 2]
    second = compact_metrics(rdir)
    assert second.name == "compact-a002-000000.parquet" and part_names(rdir) == [second.name] and not first.exists()
    assert read_metrics(rdir).equals(t)


def test_compaction_leaves_an_unreadable_part_in_place(tmp_path):
    w = MetricWriter(tmp_path, "r1", None, 0)
    for step in range(3):
        w.log("train", "loss", float(step), epoch=0, step=step)
        w.flush()
    torn = tmp_path / "metrics" / "part-a000-000001.parquet"
    torn.write_bytes(torn.read_bytes()[:20])
    with pytest.warns(UnreadablePartWarning, match=re.escape(str(torn))):
        path = compact_metrics(tmp_path)
    assert part_names(tmp_path) == [path.name, torn.name]
    with pytest.warns(UnreadablePartWarning):
        assert read_metrics(tmp_path).column("step").to_pylist() == [0, 2]


def test_compaction_at_the_end_of_a_run_never_raises(tmp_path, monkeypatch):
    from imgtrain.logs import compaction as P
    rdir = run_dir(tmp_path, "r1")
    _resumed_run(rdir)
    names, before = part_names(rdir), read_metrics(rdir)

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(P, "atomic_write_bytes", full)
    with pytest.raises(OSError):
        compact_metrics(rdir)
    with pytest.warns(RuntimeWarning, match="not compacted: OSError"):
        assert compact_metrics(rdir, strict=False) is None  # what the trainer calls at DONE
    assert part_names(rdir) == names and read_metrics(rdir).equals(before)


def test_a_running_writer_merges_its_parts_every_roll_parts(tmp_path):
    """A long run keeps a few files, not one per checkpoint; readers see exactly the same rows."""
    def write(rdir, roll):
        # attempt 0 by an earlier writer object (the engine rebuilt its logger), then attempt 0 again
        # re-logging step 1 (the later row wins a tie), and attempt 1 left alone by attempt 0's rolls
        with MetricWriter(rdir, "r", None, 0, roll_parts=roll) as w:
            for step in range(3):
                w.log("train", "loss", 10.0 + step, epoch=0, step=step)
                w.flush()
        with MetricWriter(rdir, "r", None, 1, roll_parts=roll) as w:
            w.log("train", "loss", 99.0, epoch=0, step=2)
        w = MetricWriter(rdir, "r", None, 0, roll_parts=roll)
        out = []
        for step in range(1, 10):
            w.log("train", "loss", 20.0 + step, epoch=0, step=step)
            out.append(w.flush())
        return out

    plain = write(run_dir(tmp_path, "plain"), None)
    rolled = write(run_dir(tmp_path, "rolled"), 4)
    assert len(part_names(run_dir(tmp_path, "plain"))) == 13
    # rolls at the 4th and 8th flush of the second writer, each merging every attempt-0 file there is
    assert part_names(run_dir(tmp_path, "rolled")) == [
        "compact-a000-000001.parquet", "part-a000-000011.parquet", "part-a001-000000.parquet"]
    assert [p.name for p in rolled[3::4]] == ["compact-a000-000000.parquet", "compact-a000-000001.parquet"]
    assert [p.name for p in plain[3::4]] == ["part-a000-000006.parquet", "part-a000-000010.parquet"]
    got = read_metrics(run_dir(tmp_path, "rolled")).drop_columns(["run_id", "time"])
    assert got.equals(read_metrics(run_dir(tmp_path, "plain")).drop_columns(["run_id", "time"]))
    assert got.column("value").to_pylist() == [10.0, 21.0, 99.0] + [20.0 + s for s in range(3, 10)]


def test_a_failed_roll_warns_and_keeps_the_parts(tmp_path, monkeypatch):
    from imgtrain.logs import metric_writer as P

    def full(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(P, "_replace_with_merged", full)
    w = MetricWriter(tmp_path, "r", None, 0, roll_parts=2)
    w.log("train", "loss", 1.0, epoch=0, step=0)
    w.flush()
    w.log("train", "loss", 2.0, epoch=0, step=1)
    with pytest.warns(RuntimeWarning, match="not merged: OSError"):
        assert w.flush().name == "part-a000-000001.parquet"
    assert part_names(tmp_path) == ["part-a000-000000.parquet", "part-a000-000001.parquet"]
    assert read_metrics(tmp_path).column("value").to_pylist() == [1.0, 2.0]


def test_reader_lists_again_a_run_compacted_while_it_reads(tmp_path, monkeypatch):
    from imgtrain.logs import metric_reader as P
    rdir = run_dir(tmp_path, "r1")
    _resumed_run(rdir)
    before = read_metrics(rdir)
    stale = P._closed_files(rdir)
    compact_metrics(rdir)  # between the reader's listing and its reads
    real, calls = P._closed_files, []
    monkeypatch.setattr(P, "_closed_files", lambda run: calls.append(run) or (stale if len(calls) == 1 else real(run)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a part that vanished is not an unreadable one
        assert read_metrics(rdir).equals(before)
    assert len(calls) == 2


def test_tree_of_compacted_and_open_runs(tmp_path):
    """Compacted runs are taken as they are, the others deduplicated; run order and rows as before.
    A run id met twice (a copied run directory) still counts once."""
    _write_run(tmp_path, "b-run", "s1", 3, 10)
    _write_run(tmp_path, "a-run", "s1", 2, 20)
    _write_run(tmp_path, "c-run", "s2", 4, 30)
    with MetricWriter(run_dir(tmp_path, "a-run"), "a-run", "s1", 1) as w:  # a second part, a higher attempt
        w.log("val", "acc1", 0.99, epoch=0, step=1)
    before = read_metrics(tmp_path)
    for rid in ("b-run", "c-run"):
        compact_metrics(run_dir(tmp_path, rid))
    assert read_metrics(tmp_path).equals(before)
    assert read_metrics(tmp_path, sweep="s2").equals(read_metrics(run_dir(tmp_path, "c-run")))
    import shutil
    shutil.copytree(run_dir(tmp_path, "c-run"), tmp_path / "runs" / "c-run-copy")
    assert read_metrics(tmp_path).equals(before)
    picked = read_metrics(tmp_path, run_id=["c-run", "a-run"], columns=["run_id", "metric", "value"], dictionary=True)
    assert pa.types.is_dictionary(picked.schema.field("run_id").type)
    assert picked.cast(pa.schema([SCHEMA.field(c) for c in picked.column_names])).equals(
        before.filter(pa.compute.is_in(before["run_id"], pa.array(["a-run", "c-run"]))).select(picked.column_names))


# --------------------------------------------------------------------------- summaries

def test_summaries_with_different_config_columns(tmp_path):
    cfg_a = C.from_dict({"data": {"path": "/data/a"}}, overrides=["optim.lr=0.1", "model.kwargs={k: 1}"])
    cfg_b = C.from_dict({"data": {"path": "/data/b"}}, overrides=["optim.name=sgd", "trainer.max_steps=50"])
    base = dict(sweep="sw", status="done", monitor="val/acc1", epochs=10, steps=100, wall_s=12.5,
                gpu_hours=0.01, img_per_s=800.0)
    write_summary(run_dir(tmp_path, "b"), dict(base, run_id="b", best=0.9, best_epoch=np.int64(7)), cfg_b)
    write_summary(run_dir(tmp_path, "a"), dict(base, run_id="a", best=None, best_epoch=None), cfg_a)
    # a run from another version: one config key of another type, one extra, one missing
    write_summary(run_dir(tmp_path, "c"), dict(run_id="c", status="failed", best=1, extra="x"),
                  {"optim": {"lr": 1}, "trainer": {"max_steps": "many"}, "new": {"key": [1, 2]}})
    assert not [n for n in os.listdir(run_dir(tmp_path, "a")) if n.endswith(".tmp")]

    s = read_summaries(tmp_path)
    assert s.column("run_id").to_pylist() == ["a", "b", "c"]
    assert s.column_names[:11] == ["run_id", "sweep", "status", "monitor", "best", "best_epoch", "epochs",
                                   "steps", "wall_s", "gpu_hours", "img_per_s"]
    by = {r["run_id"]: r for r in s.to_pylist()}
    assert s.schema.field("best").type == pa.float64() and by["c"]["best"] == 1.0 and by["a"]["best"] is None
    assert by["b"]["best_epoch"] == 7 and by["c"]["sweep"] is None
    assert by["a"]["cfg.optim.lr"] == 0.1 and by["b"]["cfg.optim.lr"] == 0.001 and by["c"]["cfg.optim.lr"] == 1.0
    assert s.schema.field("cfg.optim.lr").type == pa.float64()
    assert by["a"]["cfg.model.kwargs"] == '{"k": 1}' and by["b"]["cfg.model.kwargs"] == "{}"
    assert json.loads(by["a"]["cfg.data.scale"]) == [0.08, 1.0]
    assert by["a"]["cfg.data.path"] == "/data/a" and by["c"]["cfg.data.path"] is None
    # int in one run, text in another: text keeps every value
    assert s.schema.field("cfg.trainer.max_steps").type == pa.string()
    assert [by[r]["cfg.trainer.max_steps"] for r in "abc"] == [None, "50", "many"]
    assert by["c"]["cfg.new.key"] == "[1, 2]" and by["a"]["cfg.new.key"] is None
    assert by["c"]["extra"] == "x"
    # one run's summary alone, through pyarrow directly
    alone = pq.read_table(run_dir(tmp_path, "b") / "summary.parquet")
    assert alone.num_rows == 1 and alone.schema.field("cfg.optim.name").type == pa.string()
    assert read_summaries(run_dir(tmp_path, "b")).column("run_id").to_pylist() == ["b"]
    with pytest.raises(ValueError, match="run_id"):
        write_summary(tmp_path / "x", {"status": "done"})


def test_summary_json_copy_is_used_only_for_its_own_parquet_file(tmp_path):
    cfg = C.from_dict({"data": {"path": "/data/a"}}, overrides=["model.kwargs={k: 1}"])
    rdir = run_dir(tmp_path, "a")
    write_summary(rdir, dict(run_id="a", status="DONE", best=float("nan"), best_epoch=3, wall_s=1.5), cfg)
    from_parquet = pq.read_table(rdir / "summary.parquet").to_pylist()[0]
    side = json.loads((rdir / "summary.json").read_text())
    assert list(side["row"]) == list(from_parquet) and side["of"][0] == (rdir / "summary.parquet").stat().st_size
    got = read_summary_row(rdir)
    assert np.isnan(got.pop("best")) and np.isnan(from_parquet.pop("best"))
    assert got == from_parquet and got["cfg.model.kwargs"] == '{"k": 1}' and got["best_epoch"] == 3
    # summary.parquet rewritten by a tool that knows nothing of the copy: the stale copy is not used
    t = pq.read_table(rdir / "summary.parquet")
    pq.write_table(t.set_column(t.schema.get_field_index("status"), "status", pa.array(["PRUNED"])),
                   rdir / "summary.parquet")
    assert read_summary_row(rdir)["status"] == "PRUNED"
    # a value JSON would not give back as Parquet does (a timestamp): no copy at all
    write_summary(rdir, dict(run_id="a", finished=datetime(2026, 1, 2, tzinfo=timezone.utc)))
    assert not (rdir / "summary.json").exists()
    assert read_summary_row(rdir)["finished"] == datetime(2026, 1, 2, tzinfo=timezone.utc)
    (rdir / "summary.json").write_text("{torn")
    assert read_summary_row(rdir)["run_id"] == "a"
    with pytest.raises(FileNotFoundError):
        read_summary_row(run_dir(tmp_path, "none"))


# --------------------------------------------------------------------------- run.json and markers

SLURM = {
    "SLURM_JOB_ID": "1001",
    "SLURM_ARRAY_JOB_ID": "1000",
    "SLURM_ARRAY_TASK_ID": "3",
    "SLURM_RESTART_COUNT": "0",
    "SLURM_JOB_NODELIST": "gpu[01-02]",
}


def test_run_json_appends_attempts(tmp_path, monkeypatch):
    rdir = run_dir(tmp_path, "sw-abc")
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    a0 = start_attempt(rdir, run_id="sw-abc", sweep="sw", cell="abc", config_hash="h1", world_size=8,
                       hosts=["gpu01", "gpu02"])
    assert a0 == 0
    end_attempt(rdir, a0, status="preempted", exit_code=0, reason="SIGUSR1")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "1002")
    a1 = start_attempt(rdir, run_id="sw-abc", sweep="sw", cell="abc", config_hash="h1", world_size=4, hosts=["gpu03"])
    assert a1 == 1

    info = json.loads((rdir / "run.json").read_text())
    assert info == read_run(rdir)
    assert (info["run_id"], info["sweep"], info["cell"], info["config_hash"]) == ("sw-abc", "sw", "abc", "h1")
    assert info["world_size"] == 4 and info["hosts"] == ["gpu03"]  # latest allocation
    assert info["versions"]["python"].count(".") == 2 and info["versions"]["pyarrow"] == pa.__version__
    assert info["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", info["git_sha"])
    first, second = info["attempts"]
    assert first["attempt"] == 0 and second["attempt"] == 1
    assert first["slurm"] == {"job_id": "1001", "array_job_id": "1000", "array_task_id": "3",
                              "restart_count": 0, "node_list": "gpu[01-02]"}
    assert second["slurm"]["job_id"] == "1002" and second["slurm"]["restart_count"] == 1
    assert (first["status"], first["exit"], first["reason"]) == ("preempted", 0, "SIGUSR1")
    assert first["end"] >= first["start"] and first["world_size"] == 8
    assert (second["status"], second["end"], second["exit"]) == ("running", None, None)
    assert second["pid"] == os.getpid() and second["host"]
    assert not [n for n in os.listdir(rdir) if n.endswith(".tmp")]

    # killed without end_attempt: the next start marks it lost; outside SLURM there are no ids
    for k in SLURM:
        monkeypatch.delenv(k)
    assert start_attempt(rdir, run_id="sw-abc") == 2
    info = read_run(rdir)
    assert [a["status"] for a in info["attempts"]] == ["preempted", "lost", "running"]
    assert info["attempts"][2]["slurm"] is None
    with pytest.raises(ValueError, match="no attempt 7"):
        end_attempt(rdir, 7, status="done", exit_code=0)


def test_markers_and_status(tmp_path):
    rdir = run_dir(tmp_path, "r")
    assert read_status(rdir) == NEW
    start_attempt(rdir, run_id="r")
    assert read_status(rdir) == INCOMPLETE
    mark_failed(rdir, "CUDA out of memory\n")
    assert read_status(rdir) == FAILED and failure_reason(rdir) == "CUDA out of memory"
    mark_done(rdir)
    assert read_status(rdir) == DONE and not (rdir / "FAILED").exists() and failure_reason(rdir) is None
    mark_failed(rdir, "diverged")
    assert read_status(rdir) == FAILED and not (rdir / "DONE").exists()
    clear_markers(rdir)
    assert read_status(rdir) == INCOMPLETE
    assert sorted(os.listdir(rdir)) == ["run.json"]


def test_root_and_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("IMGTRAIN_ROOT", raising=False)
    assert resolve_root(None) == resolve_root("") == type(tmp_path)(".")
    monkeypatch.setenv("IMGTRAIN_ROOT", str(tmp_path))
    assert resolve_root(None) == tmp_path
    assert resolve_root("/scratch/me") == type(tmp_path)("/scratch/me")
    assert run_dir(tmp_path, "sw-1") == tmp_path / "runs" / "sw-1"
    for bad in ("", "..", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            run_dir(tmp_path, bad)


def test_atomic_write_text(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "f.txt", "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two" and os.listdir(p.parent) == ["f.txt"]


# --------------------------------------------------------------------------- progress

LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] epoch 3/10 step 1200/4000 \(30\.0%\) "
    r"loss 0\.4123 lr 1\.00e-03 img/s 812\.3 eta \d+:\d\d:\d\d$"
)


def test_progress_plain_lines():
    out = io.StringIO()
    p = Progress(4000, enabled=True, every_seconds=0, initial=1199, epochs=10, stream=out, tty=False)
    p.update(1, epoch=3, loss=0.41234, lr=1e-3, img_per_s=812.34)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]), lines
    p.write("evaluating")
    p.update(2800, epoch=10, loss=0.1)
    p.close()
    p.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert lines[1] == "evaluating"
    assert "epoch 10/10 step 4000/4000 (100.0%) loss 0.1000" in lines[2] and "eta 0:00:00" in lines[2]
    assert re.search(r"step 4000/4000 \(100\.0%\) .* done in \d+:\d\d:\d\d$", lines[3])
    assert len(lines) == 4


def test_progress_throttles_but_always_prints_the_end(capsys):
    p = Progress(None, desc="train", every_seconds=3600)  # default stream: stderr, not a TTY here
    for step in range(50):
        p.update(loss=1.0 / (step + 1))
    assert capsys.readouterr().err == ""
    p.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.search(r"\] train step 50 loss 0\.0200 done in", err[0])


def test_progress_tty_and_disabled():
    out = io.StringIO()
    with Progress(100, desc="fit", every_seconds=0, initial=10, epochs=2, stream=out, tty=True) as p:
        for _ in range(5):
            p.update(1, epoch=1, loss=0.5, lr=3e-4, img_per_s=100.0)
        p.write("checkpoint saved")
    text = out.getvalue()
    assert "checkpoint saved" in text and "loss 0.5000" in text and "15/100" in text and "fit epoch 1/2" in text

    quiet = io.StringIO()
    with Progress(100, enabled=False, every_seconds=0, stream=quiet, tty=False) as p:
        p.update(5, loss=1.0)
        p.write("not me")
    assert quiet.getvalue() == ""
