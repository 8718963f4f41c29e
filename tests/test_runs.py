"""imgtrain.runs, the one owner of a run: its id and directory, status and markers, the attempt
lifecycle, the summary row, the monitored metric, the requeue exit code — and that it imports no torch."""
import json
import subprocess
import sys
import warnings

import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from imgtrain import config as C
from imgtrain import runs
from imgtrain.logs import MetricWriter, read_run, read_summary_row

DIGITS = ROOT / "tests/configs/tiny_digits.yaml"


def cfg_of(*overrides, tmp_path=None):
    extra = [f"output.root={tmp_path}"] if tmp_path is not None else []
    return C.load(DIGITS, ["data.path=d", *extra, *overrides])


# --------------------------------------------------------------------------- id and directory

def test_run_id_is_the_config_name_and_hash_and_stable(tmp_path):
    cfg = cfg_of(tmp_path=tmp_path)
    rid = runs.run_id(cfg)
    assert rid == f"{cfg.name}-{C.config_hash(cfg)[:8]}"
    # volatile keys (paths, root) leave the id alone: a requeued or moved run finds its directory
    assert runs.run_id(cfg_of("data.num_workers=3", tmp_path=tmp_path / "elsewhere")) == rid
    assert runs.run_id(cfg_of("optim.lr=0.123", tmp_path=tmp_path)) != rid  # a result-changing key does not
    assert runs.run_id(cfg_of("output.run=mine", tmp_path=tmp_path)) == "mine"
    assert runs.run_dir(cfg) == tmp_path / "runs" / rid


def test_run_dir_without_root_uses_imgtrain_root(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGTRAIN_ROOT", str(tmp_path))
    cfg = C.load(DIGITS, ["data.path=d", "output.run=r"])
    assert runs.run_dir(cfg) == tmp_path / "runs" / "r"


def test_sweep_run_id_is_what_the_sweep_sets_as_output_run(tmp_path):
    rid = runs.sweep_run_id("s1", "abcd1234")
    assert rid == "s1-abcd1234"
    assert runs.run_id(cfg_of(f"output.run={rid}", tmp_path=tmp_path)) == rid


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", ".hidden"])
def test_run_path_refuses_ids_that_are_not_one_directory(bad, tmp_path):
    with pytest.raises(ValueError, match="invalid run id"):
        runs.run_path(tmp_path, bad)


# --------------------------------------------------------------------------- status and markers

def test_status_and_markers(tmp_path):
    rdir = tmp_path / "runs" / "r"
    rdir.mkdir(parents=True)
    assert runs.read_status(rdir) == runs.NEW == runs.run_status(rdir)
    (rdir / "run.json").write_text("{}")
    assert runs.read_status(rdir) == runs.INCOMPLETE
    runs.mark_failed(rdir, "boom\n\ntraceback")
    assert runs.read_status(rdir) == runs.FAILED and runs.failure_reason(rdir) == "boom\n\ntraceback"
    runs.mark_done(rdir)  # DONE replaces FAILED
    assert runs.read_status(rdir) == runs.DONE and not (rdir / "FAILED").exists()
    runs.mark_pruned(rdir, {"reason": "below the threshold", "rung": 1})
    # the engine still sees DONE (nothing to train); sweeps and analysis see the halving's verdict
    assert runs.read_status(rdir) == runs.DONE and runs.run_status(rdir) == runs.PRUNED
    assert runs.read_pruned(rdir) == {"reason": "below the threshold", "rung": 1}
    assert json.loads((rdir / "PRUNED").read_text()) == {"reason": "below the threshold", "rung": 1}
    runs.mark_pruned(rdir, {"reason": "a later rung"})  # the first verdict stays
    assert runs.read_pruned(rdir)["reason"] == "below the threshold"
    runs.clear_markers(rdir)
    assert runs.read_status(rdir) == runs.INCOMPLETE and runs.run_status(rdir) == runs.PRUNED
    (rdir / "PRUNED").write_text("plain text\n")
    assert runs.read_pruned(rdir) == {"reason": "plain text"}
    # from a directory listing (analysis): the same answers without stat calls
    assert runs.run_status(rdir / "nowhere", {"PRUNED", "DONE"}) == runs.PRUNED
    assert runs.read_status(rdir / "nowhere", {"FAILED", "run.json"}) == runs.FAILED


def test_old_imports_from_logs_are_the_same_objects():
    from imgtrain import logs
    assert logs.mark_done is runs.mark_done and logs.read_status is runs.read_status
    assert logs.DONE == runs.DONE and logs.run_dir is runs.run_path
    with pytest.raises(AttributeError):
        logs.no_such_name


def test_requeue_exit_code_is_one_constant():
    from imgtrain.engine import signals
    from imgtrain.sweep import job
    assert runs.REQUEUE_EXIT_CODE == 75 == signals.REQUEUE_EXIT_CODE == job.REQUEUE_EXIT_CODE


# --------------------------------------------------------------------------- attempt lifecycle

def attempts(rdir):
    return [(a["attempt"], a["status"], a["exit"], a["reason"]) for a in read_run(rdir)["attempts"]]


def test_attempt_done_writes_summary_done_and_compacts(tmp_path):
    rdir = tmp_path / "runs" / "r"
    cfg = {"trainer": {"epochs": 2}}
    with runs.attempt(rdir, run_id="r", sweep="s", cell="c", config_hash="h", config_yaml="a: 1\n") as a:
        assert a.number == 0 and read_run(rdir)["attempts"][0]["status"] == "running"
        assert (rdir / "config.yaml").read_text() == "a: 1\n"
        for seq in range(3):  # three parts
            with MetricWriter(rdir, "r", "s", a.number) as w:
                w.log("val", "acc1", 0.5 + seq / 10, epoch=seq, step=seq)
        assert len(list((rdir / "metrics").iterdir())) == 3
        a.done(runs.summary(run_id="r", sweep="s", monitor="val/acc1", best=0.7, best_epoch=2, epochs=3, steps=3,
                            wall_s=1.5, **{"test/acc1": 0.6}), config=cfg)
        assert runs.read_status(rdir) == runs.DONE  # summary and DONE at once, run.json at the end
        assert attempts(rdir) == [(0, "running", None, None)]
    assert attempts(rdir) == [(0, "DONE", 0, None)]
    assert [p.name.split("-")[0] for p in (rdir / "metrics").iterdir()] == ["compact"]
    row = read_summary_row(rdir)
    assert list(row)[:12] == ["run_id", "sweep", "status", "monitor", "best", "best_epoch", "epochs", "steps",
                              "wall_s", "gpu_hours", "img_per_s", "test/acc1"]
    assert row["status"] == "DONE" and row["best"] == 0.7 and row["cfg.trainer.epochs"] == 2
    assert pq.read_schema(rdir / "summary.parquet").field("best_epoch").type == "int64"
    info = read_run(rdir)
    assert (info["run_id"], info["sweep"], info["cell"], info["config_hash"]) == ("r", "s", "c", "h")


def test_attempt_failure_writes_failed_and_compacts(tmp_path):
    rdir = tmp_path / "runs" / "r"
    with pytest.raises(RuntimeError, match="diverged"):
        with runs.attempt(rdir, run_id="r") as a:
            with MetricWriter(rdir, "r", None, a.number) as w:  # closed before the attempt records the failure
                w.log("train", "loss", 1.0, epoch=0, step=1)
                w.flush()
                w.log("train", "loss", 2.0, epoch=0, step=2)
                raise RuntimeError("loss diverged")
    assert a.status == runs.FAILED and a.reason == "RuntimeError: loss diverged"
    assert attempts(rdir) == [(0, "FAILED", 1, "RuntimeError: loss diverged")]
    assert runs.read_status(rdir) == runs.FAILED
    reason = runs.failure_reason(rdir)
    assert reason.startswith("RuntimeError: loss diverged\n\nTraceback") and "raise RuntimeError" in reason
    assert [p.name.split("-")[0] for p in (rdir / "metrics").iterdir()] == ["compact"]
    # the next attempt is number 1; stopped by a signal it ends STOPPED with the requeue code, no marker
    with runs.attempt(rdir, run_id="r") as a:
        a.stopped("stopped by SIGUSR1")
    assert attempts(rdir)[1] == (1, "STOPPED", runs.REQUEUE_EXIT_CODE, "stopped by SIGUSR1")
    assert runs.read_status(rdir) == runs.FAILED  # a stop changes no marker (a retry clears FAILED itself)


def test_keyboard_interrupt_ends_the_attempt_without_a_marker(tmp_path):
    rdir = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        with runs.attempt(rdir, run_id="r"):
            raise KeyboardInterrupt
    assert attempts(rdir)[0][:3] == (0, "FAILED", 1) and runs.read_status(rdir) == runs.INCOMPLETE


def test_attempt_on_other_ranks_writes_nothing(tmp_path):
    rdir = tmp_path / "r"
    with pytest.raises(ValueError):
        with runs.attempt(rdir, run_id="r", write=False) as a:
            assert a.number is None
            a.done({"run_id": "r"})
            raise ValueError("x")
    assert not rdir.exists()


# --------------------------------------------------------------------------- monitored metric

def test_monitor_rule():
    assert runs.monitor() == runs.Monitor("val/acc1", "max")
    assert runs.monitor(task="score_distribution") == runs.Monitor("val/emd", "min")
    assert runs.monitor(task="score_distribution", has_val=False) == runs.Monitor("train/epoch_loss", "min")
    assert runs.monitor("val/f1") == runs.Monitor("val/f1", "max")
    assert runs.monitor("val/loss", "max") == runs.Monitor("val/loss", "max")  # an explicit mode wins
    assert [runs.metric_mode(m) for m in ("val/acc_class/3", "srcc", "train/epoch_g_loss", "mae")] == \
        ["max", "max", "min", "min"]
    with pytest.raises(ValueError, match="trainer.monitor_mode"):
        runs.monitor("val/zork")
    assert runs.monitor("val/zork", strict=False).mode == "max"  # readers of runs the trainer refused


def test_monitor_improved_is_strict():
    up, down = runs.Monitor("val/acc1", "max"), runs.Monitor("val/loss", "min")
    assert up.improved(0.5, None) and up.improved(0.6, 0.5) and not up.improved(0.5, 0.5)
    assert not up.improved(0.505, 0.5, min_delta=0.01) and up.improved(0.52, 0.5, min_delta=0.01)
    assert down.improved(0.4, 0.5) and not down.improved(0.5, 0.5) and not down.improved(0.6, 0.5)


def test_trainer_sweep_status_and_analysis_use_one_rule(tmp_path):
    from imgtrain.analysis import RunInfo, monitor_of as analysis_monitor
    from imgtrain.sweep.status import monitor_of as status_monitor
    from imgtrain.tasks import build, metric_mode
    assert metric_mode is runs.metric_mode
    for task, loss in (("classification", "ce"), ("score_distribution", "emd")):
        assert build(C.TaskConfig(name=task, loss=loss), 10).monitor_default == \
            tuple(vars(runs.monitor(task=task)).values())
    for overrides in ([], ["data.val_split=null"], ["trainer.monitor=val/loss"],
                      ["trainer.monitor=val/zork", "trainer.monitor_mode=min"]):
        cfg = cfg_of(*overrides, tmp_path=tmp_path)
        want = runs.monitor_of(cfg)
        assert status_monitor(cfg) == (want.metric, want.mode)
        flat = {f"cfg.{k}": v for k, v in C.flatten(cfg).items()}
        run = RunInfo("r", tmp_path, "NEW", None, None, None, flat, False)
        assert analysis_monitor(run, has_val=bool(cfg.data.val_split)) == (want.metric, want.mode)
    # an unknown direction: the trainer refuses; status and analysis (reading runs) do not fail
    cfg = cfg_of("trainer.monitor=val/zork", tmp_path=tmp_path)
    with pytest.raises(ValueError):
        runs.monitor_of(cfg)
    assert status_monitor(cfg) == ("val/zork", "max")


def test_leaderboard_refuses_a_metric_of_unknown_direction(tmp_path):
    from imgtrain import analysis
    rdir = tmp_path / "runs" / "r"
    with runs.attempt(rdir, run_id="r") as a, MetricWriter(rdir, "r", None, a.number) as w:
        w.log("val", "zork", 1.0, epoch=0, step=1)
        w.log("val", "acc1", 0.5, epoch=0, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = analysis.load_runs(tmp_path)
        assert analysis.leaderboard(loaded)["best"].to_pylist() == [0.5]
        with pytest.raises(LookupError, match="no known direction for metric 'val/zork'"):
            analysis.leaderboard(loaded, metric="val/zork")


# --------------------------------------------------------------------------- no torch

def test_imports_no_torch():
    code = "import sys, imgtrain.runs, imgtrain.launch, imgtrain.sweep.status, imgtrain.analysis; " \
           "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the run's owner (issue 20)

def _holder(path):
    return json.loads(path.read_text())


def test_a_second_attempt_on_a_run_in_use_stops_before_writing(tmp_path):
    rdir = tmp_path / "r"
    with runs.attempt(rdir, run_id="r", config_yaml="a: 1\n") as a:
        held = _holder(rdir / runs.LOCK)
        assert held["pid"] == __import__("os").getpid() and held["host"]
        before = sorted(p.name for p in rdir.iterdir())
        run_json = (rdir / "run.json").read_text()
        with pytest.raises(runs.Locked) as e:
            with runs.attempt(rdir, run_id="r", config_yaml="a: 2\n"):
                pass
        assert "run r is in use by another process" in str(e.value) and f"pid {held['pid']}" in str(e.value)
        assert sorted(p.name for p in rdir.iterdir()) == before and (rdir / "run.json").read_text() == run_json
        assert (rdir / "config.yaml").read_text() == "a: 1\n"
        a.done()
    assert not (rdir / runs.LOCK).exists()  # released at the end
    assert [x["status"] for x in read_run(rdir)["attempts"]] == ["DONE"]


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path, monkeypatch):
    import os
    import socket
    import time
    from shards import dirlock as L
    path = tmp_path / "LOCK"
    logs = []

    def plant(**holder):
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "since": "then", **holder}))

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant(pid=dead.pid)  # this host, its process gone (a kill -9)
    L.acquire(path, what="run x", log=logs.append).release()
    assert "its process is gone" in logs[-1]
    plant(pid=os.getppid(), pid_start=L._proc_start(os.getppid()))  # this host, alive
    with pytest.raises(L.Locked, match=f"pid {os.getppid()}"):
        L.acquire(path, what="run x", log=logs.append)
    plant(host="elsewhere", pid=7)  # another node, heartbeat fresh: cannot be asked, so it holds
    with pytest.raises(L.Locked, match="host elsewhere"):
        L.acquire(path, what="run x", log=logs.append)
    old = time.time() - 400
    os.utime(path, (old, old))  # ... until its heartbeat is 300 s old
    L.acquire(path, what="run x", log=logs.append).release()
    assert "no heartbeat for" in logs[-1]
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    plant(host="elsewhere", pid=7, slurm_job="4242")  # an earlier start of this (requeued) job
    L.acquire(path, what="run x", log=logs.append).release()
    assert "earlier start of this SLURM job" in logs[-1]


def test_the_heartbeat_touches_the_lock(tmp_path):
    import time
    from shards import dirlock as L
    lock = L.acquire(tmp_path / "LOCK", heartbeat_s=0.1)
    first = (tmp_path / "LOCK").stat().st_mtime_ns
    time.sleep(0.5)
    assert (tmp_path / "LOCK").stat().st_mtime_ns > first
    lock.release()
    assert not (tmp_path / "LOCK").exists()
