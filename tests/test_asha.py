"""ASHA (`schedule: asha`, issue 22): the rules against a reference replay, concurrent deciders, a decider
killed with -9 before its write, requeued jobs that record twice; a local sweep that runs to the end with no
process in the foreground and survives a worker killed with -9; a 16-cell sweep on the real SLURM cluster
with a worker requeued mid-rung."""
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from asha_reference import final_problems, replay
from conftest import PY, ROOT, run_cmd
from imgtrain.logs import read_status
from imgtrain.runs import run_status
from imgtrain.sweep import asha_rules as R
from imgtrain.sweep import spec as S
from imgtrain.sweep.asha_ledger import Ledger
from imgtrain.sweep.records import SweepDir

CFG = ROOT / "tests/configs/tiny_digits.yaml"
SWEEP = [PY, ROOT / "jobs/sweep.py"]


def synthetic_value(cell: str, k: int) -> float:
    """A learning curve per cell: rises with the rung, differently per cell (reproducible)."""
    rng = random.Random(cell)
    return round(rng.random() * 0.5 + 0.1 * k * rng.random(), 6)


def simulate(ledger: dict, workers: int, seed: int) -> dict:
    """W workers taking jobs and finishing them in a random order (no training, no files)."""
    rng = random.Random(seed)
    busy: dict[str, tuple[str, int]] = {}
    idle = [f"w{i}" for i in range(workers)]
    while True:
        while idle:
            w = idle.pop()
            job = R.next_job(ledger, w)
            if job is None:
                break
            busy[w] = job
        if not busy:
            return ledger
        w = rng.choice(sorted(busy))
        cid, k = busy.pop(w)
        R.record_result(ledger, cid, k, synthetic_value(cid, k), finished=k == len(ledger["rungs"]) - 1, worker=w)
        idle.append(w)


def fresh(n=20, rungs=(1, 2, 4), eta=2.0):
    return R.new_ledger("t", list(rungs), eta, "val/acc1", "max", [f"c{i:02d}" for i in range(n)])


# ----------------------------------------------------------------------------------------- rules

@pytest.mark.parametrize("workers,seed,eta", [(1, 0, 2.0), (4, 1, 2.0), (4, 2, 3.0), (8, 3, 3.0)])
def test_decisions_match_a_reference_asha(workers, seed, eta):
    ledger = simulate(fresh(27, (1, 3, 9), eta), workers, seed)
    assert final_problems(ledger) == []
    assert R.finished(ledger)
    # with one worker ASHA promotes as soon as floor(n/eta) allows; every rung's pruned cells are outside its top
    for e in ledger["events"]:
        if e["event"] == "prune":
            assert e["rank"] > e["top"]
    counts = {s: sum(c["state"] == s for c in ledger["cells"].values()) for s in (R.DONE, R.PRUNED)}
    assert counts[R.DONE] >= 1 and counts[R.DONE] + counts[R.PRUNED] == 27


def test_the_replay_catches_a_wrong_promotion():
    """The reference is not a copy of the rules: a ledger whose promotion was not ASHA's is caught."""
    ledger = simulate(fresh(12, (1, 2), 2.0), 3, 5)
    promo = next(e for e in ledger["events"] if e["event"] == "promote")
    others = [c for c in ledger["order"] if c != promo["cell"]]
    promo["cell"] = others[-1]
    assert any("ASHA would promote" in p for p in replay(ledger))


def test_a_second_result_of_the_same_rung_decides_nothing():
    ledger = fresh(4, (1, 2), 2.0)
    cid, k = R.next_job(ledger, "w0")
    assert R.record_result(ledger, cid, k, 0.5, worker="w0")
    before = json.dumps(ledger, sort_keys=True)
    assert not R.record_result(ledger, cid, k, 0.9, worker="w0")  # the requeued job finished again
    assert json.dumps(ledger, sort_keys=True) == before


def test_a_requeued_worker_resumes_its_own_claim_and_a_dead_ones_is_taken_over():
    ledger = fresh(3, (1, 2), 2.0)
    assert R.next_job(ledger, "7_0") == ("c00", 0)
    assert R.next_job(ledger, "7_1") == ("c01", 0)
    assert R.next_job(ledger, "7_0") == ("c00", 0)  # the same array task after a requeue: its own cell
    assert ledger["events"][-1]["event"] == "resume"
    assert R.next_job(ledger, "7_2") == ("c02", 0)
    # nothing else to do: a claim whose worker is gone is taken over, a live one is not
    assert R.next_job(ledger, "7_3", alive=lambda w: w != "7_1") == ("c01", 0)
    assert ledger["cells"]["c01"]["worker"] == "7_3" and ledger["events"][-1]["previous"] == "7_1"
    assert R.next_job(ledger, "7_4", alive=lambda w: True) is None


def test_results_without_a_value_never_go_on():
    ledger = fresh(4, (1, 2), 2.0)
    for w in ("w0", "w1", "w2", "w3"):
        R.next_job(ledger, w)
    for i, v in enumerate((None, 0.5, None, float("nan"))):
        assert R.record_result(ledger, f"c0{i}", 0, v, worker=f"w{i}")
    assert R.top_count(ledger, 0) == 2 and R.promotable(ledger, 0) == ["c01"]  # top 2 holds c01 and a None
    assert R.next_job(ledger, "w0") == ("c01", 1)
    R.record_result(ledger, "c01", 1, 0.6, finished=True, worker="w0")
    assert {c: v["state"] for c, v in ledger["cells"].items()} == {
        "c00": R.PRUNED, "c01": R.DONE, "c02": R.PRUNED, "c03": R.PRUNED}
    assert final_problems(ledger) == [] and R.finished(ledger)


def test_a_retried_failure_reopens_its_rung_and_its_pruned_cells_wait_again():
    ledger = fresh(4, (1, 2), 2.0)
    for w in ("w0", "w1", "w2", "w3"):
        R.next_job(ledger, w)
    R.record_result(ledger, "c00", 0, 0.9, worker="w0")
    R.record_result(ledger, "c01", 0, 0.8, worker="w1")
    R.record_result(ledger, "c02", 0, 0.1, worker="w2")
    R.record_failure(ledger, "c03", "RuntimeError: boom", worker="w3")
    # rung 1 is closed: 3 results, top 1 (c00) goes on, the others are pruned
    assert [ledger["cells"][c]["state"] for c in ("c01", "c02", "c03")] == [R.PRUNED, R.PRUNED, R.FAILED]
    assert R.retry_failed(ledger) == ["c03"]
    assert ledger["cells"]["c01"]["state"] == R.PAUSED and ledger["cells"]["c02"]["state"] == R.PAUSED
    assert [e["event"] for e in ledger["events"][-3:]] == ["retry", "unprune", "unprune"]
    assert R.next_job(ledger, "w8") == ("c03", 0) and ledger["events"][-1]["event"] == "reclaim"  # free claim first
    assert R.next_job(ledger, "w9") == ("c00", 1)
    R.record_result(ledger, "c03", 0, 0.95, worker="w8")  # 4 results: top 2 now, c03 goes on, c01/c02 pruned
    assert R.next_job(ledger, "w8") == ("c03", 1)
    R.record_result(ledger, "c00", 1, 0.7, finished=True, worker="w9")
    R.record_result(ledger, "c03", 1, 0.8, finished=True, worker="w8")
    assert final_problems(ledger) == [] and R.finished(ledger)
    assert ledger["promoted"]["0"] == ["c00", "c03"]
    assert {c for c, v in ledger["cells"].items() if v["state"] == R.PRUNED} == {"c01", "c02"}


def test_a_grown_grid_reopens_rung_one_and_a_changed_cell_is_refused():
    ledger = fresh(2, (1, 2), 2.0)
    R.merge_grid(ledger, {"c00": "h0", "c01": "h1"})
    for w in ("w0", "w1"):
        R.next_job(ledger, w)
    R.record_result(ledger, "c00", 0, 0.2, worker="w0")
    R.record_result(ledger, "c01", 0, 0.9, worker="w1")
    assert R.next_job(ledger, "w0") == ("c01", 1)
    assert ledger["cells"]["c00"]["state"] == R.PRUNED
    before = json.dumps(ledger, sort_keys=True)
    assert R.merge_grid(ledger, {"c00": "h0", "c01": "CHANGED"}) == ["c01"]
    assert json.dumps(ledger, sort_keys=True) == before  # refused: nothing changed
    assert R.merge_grid(ledger, {"c00": "h0", "c01": "h1", "c02": "h2", "c03": "h3"}) == []
    assert ledger["order"] == ["c00", "c01", "c02", "c03"] and ledger["cells"]["c00"]["state"] == R.PAUSED
    assert R.next_job(ledger, "w1") == ("c02", 0)
    assert R.next_job(ledger, "w2") == ("c03", 0)
    R.record_result(ledger, "c02", 0, 0.5, worker="w1")
    R.record_result(ledger, "c03", 0, 0.1, worker="w2")  # 4 results, top 2: c01 (promoted) and c02
    assert R.next_job(ledger, "w1") == ("c02", 1)
    R.record_result(ledger, "c01", 1, 0.9, finished=True, worker="w0")
    R.record_result(ledger, "c02", 1, 0.6, finished=True, worker="w1")
    assert final_problems(ledger) == [] and R.finished(ledger)
    assert ledger["cells"]["c00"]["state"] == R.PRUNED and ledger["cells"]["c03"]["state"] == R.PRUNED
    # a cell dropped from the grid before it started leaves the order; one that started stays
    grown = fresh(3, (1, 2), 2.0)
    R.next_job(grown, "w0")
    R.merge_grid(grown, {"c01": None})
    assert grown["order"] == ["c00", "c01"] and replay(grown) == []


def test_a_result_counts_only_from_the_claims_holder_and_a_busy_claim_is_given_back():
    ledger = fresh(2, (1, 2), 2.0)
    assert R.next_job(ledger, "a") == ("c00", 0)
    assert R.next_job(ledger, "b") == ("c01", 0)
    # "a" is thought gone: "c" takes c00 over, so a's late result is not recorded
    assert R.next_job(ledger, "c", alive=lambda w: w != "a") == ("c00", 0)
    assert not R.record_result(ledger, "c00", 0, 0.5, worker="a")
    assert "c00" not in ledger["results"].get("0", {})
    assert not R.record_result(ledger, "c00", 1, 0.5, worker="c")  # not its rung
    # c finds the run busy (a still trains it): c gives the claim back, and a, its owner, takes it again
    assert not R.give_back(ledger, "c00", "a", "busy") and R.give_back(ledger, "c00", "c", "run in use")
    assert ledger["cells"]["c00"]["worker"] is None and ledger["events"][-1]["event"] == "release"
    assert R.next_job(ledger, "a") == ("c00", 0) and R.record_result(ledger, "c00", 0, 0.5, worker="a")
    assert replay(ledger) == []


def test_release_dead_frees_only_the_claims_of_workers_that_are_gone():
    ledger = fresh(3, (1, 2), 2.0)
    for w in ("a", "b", "c"):
        R.next_job(ledger, w)
    assert R.release_dead(ledger, lambda w: w != "b") == ["c01"]
    assert [ledger["cells"][c]["worker"] for c in ("c00", "c01", "c02")] == ["a", None, "c"]
    assert R.next_job(ledger, "d") == ("c01", 0) and ledger["events"][-1]["event"] == "reclaim"


def _hammer(sweep_dir: str, worker: str, seed: int) -> None:
    rng = random.Random(seed)
    ledger = Ledger(sweep_dir)
    while True:
        with ledger.transaction(log=lambda m: None) as data:
            job = R.next_job(data, worker)
        if job is None:
            return
        time.sleep(rng.uniform(0, 0.01))
        cid, k = job
        with ledger.transaction(log=lambda m: None) as data:
            R.record_result(data, cid, k, synthetic_value(cid, k), finished=k == 2, worker=worker)


def test_concurrent_deciders_never_promote_a_slot_twice(tmp_path):
    """Six processes deciding at once on one ledger file: every decision is ASHA's, none is taken twice."""
    ledger = Ledger(tmp_path)
    with ledger.transaction(create=lambda: fresh(40, (1, 2, 4), 2.0)):
        pass
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), f"w{i}", i)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = ledger.read()
    assert final_problems(data) == []
    for k, cells in data["promoted"].items():
        assert len(cells) == len(set(cells)), k
    starts = [e["cell"] for e in data["events"] if e["event"] == "start"]
    assert sorted(starts) == sorted(data["order"]) and len(set(starts)) == 40
    assert not (tmp_path / "asha.lock").exists()


def _contend(lock_path: str, owner: str, seed: int, rounds: int) -> None:
    """Take the lock `rounds` times; inside, hold `owner` (created O_EXCL: a second holder at once fails);
    then release, or half the time die holding it (a dead holder's file, no heartbeat) so that the others
    race to take a stale lock over."""
    from shards.dirlock import Locked, acquire
    rng = random.Random(seed)
    for _ in range(rounds):
        while True:
            try:
                lock = acquire(lock_path, heartbeat_s=3600, stale_after_s=3600, log=lambda m: None)
                break
            except Locked:
                time.sleep(rng.uniform(0, 0.002))
        try:
            fd = os.open(owner, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            Path(owner + f".overlap-{os.getpid()}").touch()
            raise SystemExit(3)
        time.sleep(rng.uniform(0, 0.003))
        os.close(fd)
        os.unlink(owner)
        if rng.random() < 0.5:
            lock.release()
        else:  # die holding it: the file names a process that is gone (same pid, another start time)
            lock._stop.set()
            Path(lock_path).write_text(json.dumps({**lock.holder, "pid_start": "0"}))


def test_racing_takeovers_of_a_stale_lock_never_let_two_in(tmp_path):
    """Six processes taking over stale locks at once: the one that renames a live lock aside (it judged the
    previous, dead holder) puts it back; never are two inside."""
    ctx = mp.get_context("fork")
    lock_path, owner = str(tmp_path / "x.lock"), str(tmp_path / "owner")
    procs = [ctx.Process(target=_contend, args=(lock_path, owner, i, 60)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    overlaps = [p.name for p in tmp_path.iterdir() if ".overlap-" in p.name]
    assert overlaps == [] and [p.exitcode for p in procs] == [0] * 6


def test_a_takeover_guard_left_by_a_killed_process_is_removed(tmp_path):
    from shards.dirlock import TAKEOVER_STALE_S, acquire
    lock_path = tmp_path / "x.lock"
    lock_path.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "pid_start": "0",
                                     "token": "dead"}))
    guard = tmp_path / "x.lock.takeover"
    guard.touch()
    old = time.time() - TAKEOVER_STALE_S - 5
    os.utime(guard, (old, old))
    said = []
    lock = acquire(lock_path, log=said.append)
    assert lock.held() and not guard.exists() and "its process is gone" in said[0]
    lock.release()
    assert not lock_path.exists()


def test_a_holder_that_lost_its_lock_writes_nothing(tmp_path):
    from imgtrain.sweep.asha_ledger import LockLost
    ledger = Ledger(tmp_path)
    with ledger.transaction(create=lambda: fresh(2, (1, 2), 2.0)):
        pass
    before = ledger.path.read_bytes()
    with pytest.raises(LockLost, match="nothing was written"):
        with ledger.transaction() as data:
            R.next_job(data, "w0")
            # this holder stalled; another judged it stale and took the lock over
            (tmp_path / "asha.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "other"}))
    assert ledger.path.read_bytes() == before


def _decide_then_die(sweep_dir: str) -> None:
    ledger = Ledger(sweep_dir)
    with ledger.transaction(before_commit=lambda data: os.kill(os.getpid(), signal.SIGKILL)) as data:
        R.next_job(data, "doomed")


def test_a_decider_killed_before_its_write_leaves_the_ledger_whole(tmp_path):
    ledger = Ledger(tmp_path)
    with ledger.transaction(create=lambda: fresh(4, (1, 2), 2.0)) as data:
        R.next_job(data, "w0")
    before = ledger.path.read_bytes()
    p = mp.get_context("fork").Process(target=_decide_then_die, args=(str(tmp_path),))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    assert ledger.path.read_bytes() == before  # its decision never happened
    assert (tmp_path / "asha.lock").exists()  # its lock is left behind ...
    said = []
    with ledger.transaction(log=said.append) as data:  # ... and taken over: its process is gone
        assert R.next_job(data, "w1") == ("c01", 0)
    assert said and "its process is gone" in said[0]
    assert [e["worker"] for e in ledger.read()["events"] if e["event"] != "grid"] == ["w0", "w1"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".asha.json")]  # no temporary file left


# ----------------------------------------------------------------------------------------- spec

@pytest.mark.parametrize("extra, words", [
    ({"keep": 0.5}, "use eta: instead of keep:"),
    ({"eta": 1}, "eta must be a number greater than 1"),
    ({"eta": "x"}, "eta must be a number greater than 1"),
])
def test_asha_spec_errors_name_the_key(tmp_path, extra, words):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({"name": "a", "config": str(CFG), "grid": {"optim.lr": [0.1, 0.2]},
                                    "schedule": "asha", "rungs": [1, 2], **extra}))
    with pytest.raises(S.SpecError, match=words):
        S.load_spec(path)


def test_eta_needs_asha_and_defaults_to_3(tmp_path):
    path = tmp_path / "a.yaml"
    base = {"name": "a", "config": str(CFG), "grid": {"optim.lr": [0.1, 0.2]}, "rungs": [1, 2],
            "overrides": {"data.path": "/nowhere"}}
    path.write_text(yaml.safe_dump({**base, "schedule": "halving", "eta": 2}))
    with pytest.raises(S.SpecError, match="eta needs schedule: asha"):
        S.load_spec(path)
    path.write_text(yaml.safe_dump({**base, "schedule": "asha"}))
    sweep = S.load_spec(path)
    assert sweep.halving.asha and sweep.halving.eta == 3 and {c.config.trainer.epochs for c in sweep.cells} == {2}


def test_ddp_cells_are_refused_before_anything_is_submitted(digits_shards, tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({"name": "a", "config": str(CFG), "overrides": {"data.path": str(digits_shards)},
                                    "grid": {"optim.lr": [0.1, 0.2]}, "schedule": "asha", "rungs": [1, 2],
                                    "resources": {"gpus_per_node": 2}}))
    proc = run_cmd([*SWEEP, path, "--root", tmp_path / "root", "--executor", "local"], check=False)
    assert proc.returncode == 2 and "runs each cell in one process" in proc.stderr
    assert not (tmp_path / "root/sweeps/a/asha.json").exists()


def test_a_sweep_that_fails_its_preflight_leaves_no_records(tmp_path):
    path = asha_spec(tmp_path / "p.yaml", tmp_path / "no_shards", "pf", 2)
    proc = run_cmd([*SWEEP, path, "--root", tmp_path / "root", "--executor", "local"], check=False)
    assert proc.returncode != 0 and "preflight failed, nothing submitted" in proc.stderr + proc.stdout
    assert "manifest.json" in proc.stderr + proc.stdout
    sweep_dir = tmp_path / "root/sweeps/pf"
    assert not (sweep_dir / "sweep.json").exists() and not (sweep_dir / "asha.json").exists()


# ----------------------------------------------------------------------------------------- local

def asha_spec(path: Path, data: Path, name: str, n_lr: int, rungs=(1, 2, 3), batch=64, **extra) -> Path:
    lrs = [0.0005, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2][:n_lr]
    path.write_text(yaml.safe_dump({
        "name": name, "config": str(CFG),
        "overrides": {"data.path": str(data), "data.batch_size": batch, "data.num_workers": 0},
        "grid": {"optim.lr": lrs, "model.width": [[16], [32]]},
        "schedule": "asha", "rungs": list(rungs), "eta": 2, **extra}, sort_keys=False))
    return path


def wait_finished(sweep_dir: Path, timeout: float, also=lambda: True) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        data = Ledger(sweep_dir).read()
        if data and R.finished(data) and also():
            return data
        time.sleep(1)
    raise TimeoutError(f"ASHA not finished after {timeout} s: {json.dumps((Ledger(sweep_dir).read() or {}).get('cells'))}")


def check_run_dirs(root: Path, sweep, data: dict) -> None:
    for c in sweep.cells:
        rdir = root / "runs" / c.run_id
        state = data["cells"][c.id]["state"]
        if state == R.DONE:
            assert read_status(rdir) == "DONE", c.id
        else:
            assert state == R.PRUNED and run_status(rdir) == "PRUNED", (c.id, state)
            marker = json.loads((rdir / "PRUNED").read_text())
            assert marker["schedule"] == "asha" and marker["rank"] > marker["kept"]


@pytest.mark.slow
def test_local_asha_runs_to_the_end_detached_and_survives_a_worker_killed(digits_shards, tmp_path):
    root = tmp_path / "root"
    path = asha_spec(tmp_path / "a.yaml", digits_shards, "la", 4)
    sweep_dir = root / "sweeps/la"
    proc = run_cmd([*SWEEP, path, "--root", root, "--executor", "local", "--parallel", "2"], timeout=120)
    assert "started 2 ASHA worker process(es)" in proc.stdout
    assert not R.finished(Ledger(sweep_dir).read())  # it returned while the workers had the sweep to do
    workers = SweepDir(root, "la").submissions()[-1]["workers"]
    # the command has returned: the workers are nobody's children here, in sessions of their own
    for w in workers:
        assert os.getsid(w["pid"]) == w["pid"]

    # kill -9 one worker (and its session) while it trains a cell: the other takes its claim over at the end
    def claimed():
        data = Ledger(sweep_dir).read() or {"cells": {}}
        return [cid for cid, c in data["cells"].items()
                if c["state"] == "training" and c["worker"] and f":{workers[0]['pid']}:" in c["worker"]]
    deadline, victim = time.time() + 120, []
    while not victim and time.time() < deadline:
        os.kill(workers[0]["pid"], signal.SIGSTOP)  # frozen, its claim cannot change while we look
        victim = claimed()
        if not victim:
            os.kill(workers[0]["pid"], signal.SIGCONT)
            time.sleep(0.05)
    assert victim, "worker 0 never held a cell"
    os.killpg(workers[0]["pid"], signal.SIGKILL)
    from imgtrain.sweep.records import proc_alive
    data = wait_finished(sweep_dir, 400, also=lambda: not any(proc_alive(w["pid"], w["pid_start"], w["host"])
                                                            for w in workers))
    assert final_problems(data) == []
    reclaims = [e for e in data["events"] if e["event"] == "reclaim"]
    assert reclaims and reclaims[0]["cell"] == victim[0] and f":{workers[0]['pid']}:" in reclaims[0]["previous"]
    sweep = S.load_spec(path, root=str(root))
    check_run_dirs(root, sweep, data)
    # status shows the rungs; submitting again starts nothing and records nothing
    status = run_cmd([*SWEEP, "status", "la", "--root", root])
    assert "ASHA by val/acc1 (max), eta 2: finished" in status.stdout and "rung 3/3 (epoch 3)" in status.stdout
    before = Ledger(sweep_dir).path.read_bytes()
    again = run_cmd([*SWEEP, path, "--root", root, "--executor", "local", "--parallel", "2"])
    assert "ASHA is finished" in again.stdout and Ledger(sweep_dir).path.read_bytes() == before
    # the same name with another base config would mix two experiments in one ledger: refused, nothing written
    info = (sweep_dir / "sweep.json").read_bytes()
    changed = asha_spec(tmp_path / "b.yaml", digits_shards, "la", 4, batch=32)
    refused = run_cmd([*SWEEP, changed, "--root", root, "--executor", "local"], check=False)
    assert refused.returncode == 2 and "use a new sweep name" in refused.stderr, refused.stderr
    assert (sweep_dir / "sweep.json").read_bytes() == info and Ledger(sweep_dir).path.read_bytes() == before
    # so is a grid that leaves out cells that have started (ASHA may still promote them)
    fewer = asha_spec(tmp_path / "f.yaml", digits_shards, "la", 2)
    refused = run_cmd([*SWEEP, fewer, "--root", root, "--executor", "local"], check=False)
    assert refused.returncode == 2 and "have started and are not in the grid" in refused.stderr, refused.stderr
    assert (sweep_dir / "sweep.json").read_bytes() == info


@pytest.mark.slow
def test_a_cancelled_local_sweep_stops_and_a_new_submission_resumes_it(digits_shards, tmp_path):
    from imgtrain.sweep.records import proc_alive
    root = tmp_path / "root"
    path = asha_spec(tmp_path / "c.yaml", digits_shards, "lc", 2, rungs=(1, 2), batch=8)
    sweep_dir = root / "sweeps/lc"
    run_cmd([*SWEEP, path, "--root", root, "--executor", "local", "--parallel", "1"], timeout=120)
    worker = SweepDir(root, "lc").submissions()[-1]["workers"][0]
    deadline = time.time() + 120
    while time.time() < deadline and not any(
            c["state"] == "training" for c in (Ledger(sweep_dir).read() or {"cells": {}})["cells"].values()):
        time.sleep(0.1)
    cancel = run_cmd([*SWEEP, "cancel", "lc", "--root", root])
    assert f"SIGTERM to pids {worker['pid']}" in cancel.stdout
    deadline = time.time() + 60
    while proc_alive(worker["pid"], worker["pid_start"], worker["host"]) and time.time() < deadline:
        time.sleep(0.2)
    assert not proc_alive(worker["pid"], worker["pid_start"], worker["host"]), "the worker ignored the cancel"
    log = Path(worker["log"]).read_text()
    assert "stopped by a signal" in log and "nothing left" not in log, log[-2000:]
    data = Ledger(sweep_dir).read()
    assert not R.finished(data)
    again = run_cmd([*SWEEP, path, "--root", root, "--executor", "local", "--parallel", "1"], timeout=120)
    assert "started 1 ASHA worker" in again.stdout
    if any(c["state"] == "training" for c in data["cells"].values()):
        assert "freed the cells of workers that are gone" in again.stdout
    data = wait_finished(sweep_dir, 300)
    assert final_problems(data) == []
    check_run_dirs(root, S.load_spec(path, root=str(root)), data)


# ----------------------------------------------------------------------------------------- SLURM

@pytest.mark.slow
def test_slurm_asha_sixteen_cells_four_workers_one_requeued_mid_rung(digits_shards, tmp_path, slurm_cluster,
                                                                     monkeypatch):
    slurm_cluster.activate(monkeypatch)
    root = tmp_path / "root"
    # rungs of 2, 4 and 6 epochs at batch 8: a worker holds a cell for seconds at a time, so the requeue
    # below lands while it trains one (mid-rung), not in the milliseconds between two
    path = asha_spec(tmp_path / "s.yaml", digits_shards, "sa", 8, rungs=(2, 4, 6), batch=8,
                     resources={"time": 20, "array_parallelism": 4, "cpus_per_task": 1})
    sweep_dir = root / "sweeps/sa"
    proc = run_cmd([*SWEEP, path, "--root", root, "--partition", slurm_cluster.partition], env=slurm_cluster.env,
                   timeout=120)
    assert "submitted 4 ASHA worker(s) as SLURM job array" in proc.stdout
    job = SweepDir(root, "sa").submissions()[-1]["job_ids"][0]
    again = run_cmd([*SWEEP, path, "--root", root, "--partition", slurm_cluster.partition], env=slurm_cluster.env)
    assert "nothing to start" in again.stdout and len(SweepDir(root, "sa").submissions()) == 1

    # requeue worker 1 while it trains a cell past its first checkpoint of the rung (SIGTERM: last.pt)
    def training_by(worker):
        data = Ledger(sweep_dir).read() or {"cells": {}}
        return [cid for cid, c in data["cells"].items() if c["state"] == "training" and c["worker"] == worker]
    deadline = time.time() + 240
    while not training_by(f"{job}_1") and time.time() < deadline:
        time.sleep(0.05)
    cell = training_by(f"{job}_1")
    assert cell, "worker 1 never held a cell"
    slurm_cluster.run(["scontrol", "requeue", f"{job}_1"])
    data = wait_finished(sweep_dir, 600)
    slurm_cluster.wait_job(job, timeout=120, source="sacct")
    assert final_problems(data) == []
    # the requeued task resumed the cell it held when it was stopped (mid-rung: no result of it in between)
    mine = [e for e in data["events"] if e.get("worker") == f"{job}_1"]
    first = next(i for i, e in enumerate(mine) if e["event"] == "resume")
    held = mine[first - 1]
    assert held["event"] in ("start", "promote", "reclaim") and held["cell"] == mine[first]["cell"], mine[:first + 1]
    assert held["cell"] == cell[0] or held["seq"] > min(e["seq"] for e in mine if e["cell"] == cell[0]), mine
    history = slurm_cluster.run(["sacct", "-n", "-X", "-P", "-D", "-j", str(job), "-o", "JobID,State"]).stdout
    assert any(line.startswith(f"{job}_1|") and "REQUEUED" in line for line in history.splitlines()), history
    assert slurm_cluster.sacct_states(job) == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    sweep = S.load_spec(path, root=str(root))
    check_run_dirs(root, sweep, data)
    status = run_cmd([*SWEEP, "status", "sa", "--root", root], env=slurm_cluster.env)
    assert "eta 2: finished" in status.stdout and "rung 1/3 (epoch 2): 16 result(s), top 8 go on" in status.stdout
