"""Fault tolerance with real processes: exact resume after signals (DDP, accumulation), kill -9 during a
checkpoint write, damaged checkpoints, resume with fewer ranks, a dead rank, damaged shards."""
import json
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest
import torch

from conftest import ROOT, run_cmd, train_cmd
from imgtrain.logs import read_metrics

CFG = ROOT / "tests/configs/tiny_digits.yaml"
pytestmark = pytest.mark.slow


def overrides(data, root, run="ft", *extra):
    return [f"data.path={data}", f"output.root={root}", f"output.run={run}", "trainer.epochs=1", *extra]


def model_of(rdir):
    return torch.load(rdir / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]


def same_weights(a, b):
    wa, wb = model_of(a), model_of(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def comparable_metrics(rdir):
    """Every metric row (split, metric, epoch, step, value) but the speed (img_per_s)."""
    t = read_metrics(rdir)
    rows = t.select(["split", "metric", "epoch", "step", "value"]).to_pylist()
    return [r for r in rows if r["metric"] != "img_per_s"]


def attempts(rdir):
    return [a["status"] for a in json.loads((rdir / "run.json").read_text())["attempts"]]


def assert_stopped(proc, rdir, nproc=1):
    """A clean stop: one process exits 75; torchrun reports any non-zero worker as its own exit 1, so
    under torchrun the attempt's status in run.json is what says "requeue me"."""
    assert proc.returncode == (75 if nproc == 1 else 1), proc.stderr[-3000:]
    assert attempts(rdir)[-1] == "STOPPED"


@pytest.mark.parametrize("nproc, accum, hook", [
    (2, 1, {"IMGTRAIN_TEST_SIGNAL_AT_STEP": "30"}),
    (1, 2, {"IMGTRAIN_TEST_SIGNAL_AT_MICRO": "40"}),  # arrives on the first micro-batch of step 21
    (2, 2, {"IMGTRAIN_TEST_SIGNAL_AT_MICRO": "50"}),
])
def test_signal_then_resume_is_bit_identical(digits_shards, tmp_path, nproc, accum, hook):
    batch = 16 // nproc
    # log rows every 7 steps: each stop (step 30, 21, 26) falls inside a log window, whose sums the checkpoint holds
    extra = [f"data.batch_size={batch}", f"trainer.grad_accum={accum}", "trainer.log_every_steps=7"]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_cmd(train_cmd(CFG, *overrides(digits_shards, straight, "ft", *extra), nproc=nproc))
    stopped = run_cmd(train_cmd(CFG, *overrides(digits_shards, resumed, "ft", *extra), nproc=nproc), env=hook,
                      check=False)
    assert_stopped(stopped, resumed / "runs/ft", nproc)
    stop_step = torch.load(resumed / "runs/ft/checkpoints/last.pt", weights_only=True)["state"]["step"]
    expected = 30 if "IMGTRAIN_TEST_SIGNAL_AT_STEP" in hook else int(next(iter(hook.values()))) // accum + 1
    assert stop_step == expected
    run_cmd(train_cmd(CFG, *overrides(digits_shards, resumed, "ft", *extra), nproc=nproc))
    assert same_weights(straight / "runs/ft", resumed / "runs/ft")
    assert comparable_metrics(straight / "runs/ft") == comparable_metrics(resumed / "runs/ft")
    assert attempts(resumed / "runs/ft") == ["STOPPED", "DONE"]


@pytest.fixture(scope="module")
def straight(digits_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    run_cmd(train_cmd(CFG, *overrides(digits_shards, root)))
    return root / "runs/ft"


def test_kill9_during_checkpoint_write_keeps_the_previous_one(digits_shards, tmp_path, straight):
    flag = tmp_path / "paused"
    cmd = train_cmd(CFG, *overrides(digits_shards, tmp_path, "ft", "trainer.ckpt_every_steps=10"))
    env = dict(os.environ, OMP_NUM_THREADS="1", IMGTRAIN_TEST_PAUSE_IN_SAVE=str(flag), IMGTRAIN_TEST_PAUSE_AT_SAVE="2")
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not flag.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert flag.exists(), "the run never reached its second checkpoint"
    tmp_file = flag.read_text()
    proc.kill()  # SIGKILL while the new checkpoint exists only under its temporary name
    proc.wait()
    ckpts = tmp_path / "runs/ft/checkpoints"
    assert os.path.exists(tmp_file) and not (ckpts / "last.pt.new").exists()
    assert torch.load(ckpts / "last.pt", weights_only=True)["state"]["step"] == 10
    resumed = run_cmd(train_cmd(CFG, *overrides(digits_shards, tmp_path, "ft", "trainer.ckpt_every_steps=10")))
    assert "resumed ft at epoch 0 step 10" in resumed.stdout
    assert same_weights(straight, tmp_path / "runs/ft")
    assert comparable_metrics(straight) == comparable_metrics(tmp_path / "runs/ft")  # no gap, no duplicate
    assert attempts(tmp_path / "runs/ft") == ["lost", "DONE"]


def test_second_signal_while_saving_changes_nothing(digits_shards, tmp_path, straight):
    flag = tmp_path / "paused"
    cmd = train_cmd(CFG, *overrides(digits_shards, tmp_path))
    env = dict(os.environ, OMP_NUM_THREADS="1", IMGTRAIN_TEST_SIGNAL_AT_STEP="30",
               IMGTRAIN_TEST_PAUSE_IN_SAVE=str(flag), IMGTRAIN_TEST_PAUSE_AT_SAVE="1")
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not flag.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert flag.exists(), "the stop checkpoint was never written"
    proc.send_signal(signal.SIGTERM)  # a second signal in the middle of the save
    time.sleep(0.5)
    flag.unlink()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert torch.load(tmp_path / "runs/ft/checkpoints/last.pt", weights_only=True)["state"]["step"] == 30
    run_cmd(train_cmd(CFG, *overrides(digits_shards, tmp_path)))
    assert same_weights(straight, tmp_path / "runs/ft")


def test_damaged_checkpoints_fall_back_or_stop_clearly(digits_shards, tmp_path, straight):
    args = overrides(digits_shards, tmp_path, "ft", "trainer.ckpt_every_steps=10")
    stopped = run_cmd(train_cmd(CFG, *args), env={"IMGTRAIN_TEST_SIGNAL_AT_STEP": "30"}, check=False)
    assert_stopped(stopped, tmp_path / "runs/ft")
    ckpts = tmp_path / "runs/ft/checkpoints"
    backup = tmp_path / "backup"
    shutil.copytree(ckpts, backup)

    last = ckpts / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # torn
    resumed = run_cmd(train_cmd(CFG, *args))
    assert "last.pt: unreadable" in resumed.stderr and "resumed ft at epoch 0 step 20" in resumed.stdout
    assert same_weights(straight, tmp_path / "runs/ft")

    # every checkpoint damaged: a clear error, never a silent fresh start
    shutil.rmtree(ckpts)
    shutil.copytree(backup, ckpts)
    (tmp_path / "runs/ft/DONE").unlink()
    for p in ckpts.glob("last*.pt"):
        p.write_bytes(b"not a checkpoint")
    failed = run_cmd(train_cmd(CFG, *args), check=False)
    assert failed.returncode == 1
    assert "no usable checkpoint" in failed.stderr and "refusing to start over existing progress" in failed.stderr
    assert "no usable checkpoint" in (tmp_path / "runs/ft/FAILED").read_text()

    # the same run id with a config that changes results: refused, naming the hash mismatch
    shutil.rmtree(ckpts)
    shutil.copytree(backup, ckpts)
    changed = run_cmd(train_cmd(CFG, *args, "optim.lr=0.01"), check=False)
    assert changed.returncode == 1 and "config hash" in changed.stderr


@pytest.mark.multiproc
def test_resume_on_fewer_ranks_sees_each_sample_once(digits_shards, tmp_path):
    trace = tmp_path / "trace"
    args = overrides(digits_shards, tmp_path, "ft", "data.batch_size=8")
    env = {"IMGTRAIN_TEST_TRACE_SAMPLES": str(trace)}
    stopped = run_cmd(train_cmd(CFG, *args, nproc=2), env={**env, "IMGTRAIN_TEST_SIGNAL_AT_STEP": "30"}, check=False)
    assert_stopped(stopped, tmp_path / "runs/ft", nproc=2)
    resumed = run_cmd(train_cmd(CFG, *args, nproc=1), env=env)
    assert "world size changed 2 -> 1: continuing at epoch 0, sample 480 of the epoch, step 30" in resumed.stdout
    seen = []
    for f in tmp_path.glob("trace.rank*"):
        for line in f.read_text().splitlines():
            seen += [int(i) for i in line.split()[1:]]
    assert len(seen) == len(set(seen)), "a sample was trained on twice"
    assert len(seen) == 1259 - 1259 % 8 and set(seen) <= set(range(1259))  # only the last partial batch is left out
    run = json.loads((tmp_path / "runs/ft/run.json").read_text())
    assert [a["world_size"] for a in run["attempts"]] == [2, 1]


@pytest.mark.multiproc
def test_a_dead_rank_fails_the_job_promptly_and_it_resumes(digits_shards, tmp_path):
    args = overrides(digits_shards, tmp_path, "ft", "trainer.epochs=3", "trainer.ckpt_every_steps=20",
                     "dist.timeout_s=30")
    proc = subprocess.Popen([str(c) for c in train_cmd(CFG, *args, nproc=2)], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ckpt = tmp_path / "runs/ft/checkpoints/last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists()
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
    rank1 = [p for p in workers if p.environ().get("RANK") == "1"]
    assert len(rank1) == 1
    killed_at = time.time()
    rank1[0].send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.time() - killed_at < 60, out[-3000:]
    assert "exitcode  : -9" in out  # torchrun names the dead rank
    resumed = run_cmd(train_cmd(CFG, *args, nproc=2))
    assert "resumed ft" in resumed.stdout and (tmp_path / "runs/ft/DONE").exists()
    print(out[-4000:])


def _truncate_first_train_shard(src, dst):
    shutil.copytree(src, dst)
    shard = dst / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def test_truncated_shard_is_skipped_then_over_the_limit_stops_naming_it(digits_shards, tmp_path):
    data = tmp_path / "data"
    _truncate_first_train_shard(digits_shards, data)
    ok = run_cmd(train_cmd(CFG, *overrides(data, tmp_path, "lenient", "data.max_bad_fraction=0.5")))
    _, _, skipped = None, None, read_metrics(tmp_path / "runs/lenient")
    rows = [r for r in skipped.to_pylist() if r["split"] == "train" and r["metric"] == "skipped"]
    assert rows and 100 < rows[-1]["value"] < 300  # about half of a 300-sample shard
    assert "damaged shard train-000000.tar" in ok.stderr
    strict = run_cmd(train_cmd(CFG, *overrides(data, tmp_path, "strict")), check=False)
    assert strict.returncode == 1 and "exceed data.max_bad_fraction=0.01" in strict.stderr
    assert "train-000000.tar" in (tmp_path / "runs/strict/FAILED").read_text()
