"""imgtrain.launch (the Python half of slurm/launch.sh) without a cluster: the requeue/FAILED
decision on hand-made run directories, `check`, the recipe configs in jobs/configs/, and a stop signal
that reaches a worker while it is still importing torch."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from unittest import mock

import pytest

from conftest import PY, ROOT
from imgtrain import config as C
from imgtrain import launch
from imgtrain.logs.runinfo import end_attempt, read_run, start_attempt
from imgtrain.runs import read_status

RECIPE_CONFIGS = ["ava_vit", "cifar10_convmixer", "cifar100_vit_finetune", "clipart_vgg19"]


def attempt(rdir, job, status, exit_code, reason=None):
    """Record an attempt as the engine does, inside SLURM job `job`."""
    with mock.patch.dict(os.environ, {"SLURM_JOB_ID": str(job)}):
        n = start_attempt(rdir, run_id=rdir.name, world_size=1)
    if status != "running":
        end_attempt(rdir, n, status=status, exit_code=exit_code, reason=reason)
    return n


def decide(rdir, **kw):
    kw.setdefault("job_id", "7")
    kw.setdefault("attempts_before", len((read_run(rdir) or {}).get("attempts", [])) - 1)
    kw.setdefault("exit_code", 1)
    kw.setdefault("max_attempts", 2)
    return launch.decide(rdir, **kw)


def test_done_run_is_done(tmp_path):
    rdir = tmp_path / "r"
    attempt(rdir, 7, "DONE", 0)
    (rdir / "DONE").write_text("x\n")
    assert decide(rdir, exit_code=0) == "done"


def test_stopped_attempt_is_requeued_and_not_counted(tmp_path):
    rdir = tmp_path / "r"
    for _ in range(4):  # preemptions never use up the attempt budget
        attempt(rdir, 7, "STOPPED", 75)
        assert decide(rdir, exit_code=0, stop="requeue") == "requeue"
    assert launch.failed_attempts(read_run(rdir), "7") == 0
    # a worker signalled directly (the batch script saw nothing) is requeued too
    attempt(rdir, 7, "STOPPED", 75)
    assert decide(rdir, exit_code=1, stop="none") == "requeue"


def test_stop_kinds(tmp_path):
    rdir = tmp_path / "r"
    attempt(rdir, 7, "STOPPED", 75)
    assert decide(rdir, exit_code=0, stop="slurm") == "slurm"
    assert decide(rdir, exit_code=0, stop="cancel") == "cancelled"
    with pytest.raises(ValueError):
        decide(rdir, stop="bogus")


def test_killed_step_after_stop_is_recorded_as_stopped(tmp_path):
    rdir = tmp_path / "r"
    attempt(rdir, 7, "running", None)  # the trainer never recorded its end (killed)
    assert decide(rdir, exit_code=137, stop="requeue") == "requeue"
    last = read_run(rdir)["attempts"][-1]
    assert last["status"] == "STOPPED" and last["exit"] == 137 and "stop signal" in last["reason"]


def test_failures_requeue_until_max_attempts_then_failed(tmp_path):
    rdir = tmp_path / "r"
    err = tmp_path / "job.err"
    err.write_text("".join(f"noise {i}\n" for i in range(100)) + "RuntimeError: disk on fire\n")
    attempt(rdir, 7, "FAILED", 1, reason="RuntimeError: disk on fire")
    (rdir / "FAILED").write_text("RuntimeError: disk on fire\n\nTraceback ...\n")  # the engine writes it
    assert decide(rdir, err_log=str(err)) == "retry"
    assert read_status(rdir) != "FAILED"  # cleared: the run goes on
    attempt(rdir, 7, "FAILED", 1, reason="RuntimeError: disk on fire")
    assert decide(rdir, err_log=str(err)) == "failed"
    text = (rdir / "FAILED").read_text()
    assert "FAILED after 2 failed attempt(s) of job 7 (trainer.max_attempts=2)" in text
    assert "exited with status 1" in text and "RuntimeError: disk on fire" in text
    assert "noise 99" in text and "noise 10\n" not in text  # the tail of the error log, not all of it
    assert [a["status"] for a in read_run(rdir)["attempts"]] == ["FAILED", "FAILED"]


def test_failures_are_counted_per_job(tmp_path):
    rdir = tmp_path / "r"
    attempt(rdir, 5, "FAILED", 1)
    attempt(rdir, 5, "FAILED", 1)  # an earlier submission used its budget
    attempt(rdir, 7, "FAILED", 1)
    assert decide(rdir, job_id="7") == "retry"  # a new sbatch starts a fresh budget


def test_step_that_died_before_training_gets_an_attempt(tmp_path):
    rdir = tmp_path / "r"
    rdir.mkdir()
    # nothing recorded: an import error, a rendezvous failure, a missing container...
    assert decide(rdir, attempts_before=0, exit_code=1, max_attempts=1) == "failed"
    attempts = read_run(rdir)["attempts"]
    assert len(attempts) == 1 and attempts[0]["status"] == "FAILED" and attempts[0]["exit"] == 1
    assert attempts[0]["slurm"] is None or attempts[0]["slurm"]["job_id"]
    assert "exited with status 1" in (rdir / "FAILED").read_text()


def test_killed_step_without_signal_is_a_failure(tmp_path):
    rdir = tmp_path / "r"
    attempt(rdir, 7, "running", None)
    assert decide(rdir, exit_code=137) == "retry"
    last = read_run(rdir)["attempts"][-1]
    assert last["status"] == "FAILED" and last["exit"] == 137


def test_requeue_target_and_signal_stops():
    """One owner of what `scontrol requeue` takes (the batch script and the sweeps' submitit tasks ask it)."""
    assert launch.requeue_target({}) is None
    assert launch.requeue_target({"SLURM_JOB_ID": "41"}) == "41"
    assert launch.requeue_target({"SLURM_JOB_ID": "45", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}) == "40_3"
    # a stop signal while the job still runs is a warning: it requeues itself; otherwise SLURM decides
    assert launch.stop_of_signal("RUNNING") == "requeue"
    assert [launch.stop_of_signal(s) for s in ("COMPLETING", "CANCELLED", None)] == ["slurm"] * 3


def test_decide_cli_names_the_requeue_target(tmp_path, capsys):
    rdir = tmp_path / "run"
    rdir.mkdir()
    attempt(rdir, 7, "STOPPED", 75)
    env = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1"}
    args = ["decide", "--run-dir", str(rdir), "--job-id", "7", "--attempts-before", "0", "--exit", "75",
            "--stop", "requeue"]
    with mock.patch.dict(os.environ, env):
        assert launch.main(args) == 0
        assert capsys.readouterr().out == "requeue 7_1\n"
        assert launch.main(["target"]) == 0
        assert capsys.readouterr().out == "7_1\n"
        assert launch.main([*args[:-1], "cancel"]) == 0
        assert capsys.readouterr().out == "cancelled\n"
    with mock.patch.dict(os.environ, {}, clear=True):
        assert launch.main(["target"]) == 2


def test_check_cli(digits_shards, tmp_path, capsys):
    args = ["check", "--config", str(ROOT / "tests/configs/tiny_digits.yaml"), f"data.path={digits_shards}",
            f"output.root={tmp_path}", "output.run=chk", "--job-id", "7"]
    assert launch.main(args) == launch.CHECK_OK
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert out["run_dir"] == str(tmp_path / "runs/chk") and out["status"] == "NEW" and out["max_attempts"] == "5"
    assert launch.main(args[:-3] + ["optim.lrr=1"]) == launch.CHECK_BAD_CONFIG
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    missing = args[:2] + [args[2], f"data.path={tmp_path}/nothing", *args[4:]]
    assert launch.main(missing) == launch.CHECK_BAD_CONFIG
    capsys.readouterr()
    assert launch.main(missing + ["--skip-preflight"]) == launch.CHECK_OK  # a requeued attempt: keys only
    rdir = tmp_path / "runs/chk"
    attempt(rdir, 7, "FAILED", 1)
    attempt(rdir, 7, "FAILED", 1)
    (rdir / "FAILED").write_text("boom\n")
    assert launch.main(args + ["trainer.max_attempts=2"]) == launch.CHECK_FAILED  # no attempts left for job 7
    assert launch.main(args[:-2] + ["--job-id", "8", "trainer.max_attempts=2"]) == launch.CHECK_OK  # new job
    assert read_status(rdir) != "FAILED"
    (rdir / "DONE").write_text("x\n")
    assert launch.main(args) == launch.CHECK_DONE


def test_paths_cli(tmp_path, capsys):
    assert launch.main(["paths", "--config", str(ROOT / "jobs/configs/ava_vit.yaml"), "data.path=d",
                        f"output.root={tmp_path}", "model.pretrained_path=/w/vit.safetensors"]) == 0
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert out == {"name": "ava_vit", "data_path": os.path.abspath("d"), "output_root": str(tmp_path),
                   "pretrained_path": "/w/vit.safetensors"}


# ------------------------------------------------------------------------------------ early signal

def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler installed for `sig` (SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (sig - 1) & 1)


def test_usr1_while_the_worker_imports_torch_stops_after_the_first_step(digits_shards, tmp_path):
    """jobs/train.py records a USR1 before its heavy imports (the default action would kill it; under
    the launcher's torchrun it would be ignored); the trainer then trains one step, writes last.pt and
    exits 75."""
    cmd = [PY, ROOT / "jobs/train.py", "--config", ROOT / "tests/configs/tiny_digits.yaml",
           f"data.path={digits_shards}", f"output.root={tmp_path}", "output.run=early"]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 30
    while not catches(proc.pid, signal.SIGUSR1):
        assert proc.poll() is None and time.monotonic() < deadline, "jobs/train.py never caught USR1"
        time.sleep(0.002)
    proc.send_signal(signal.SIGUSR1)
    importing = "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
    out, err = proc.communicate(timeout=120)
    assert importing, "torch was already loaded when the signal was sent: nothing early was tested"
    assert proc.returncode == 75, err[-3000:]
    assert "stopped by SIGUSR1 at epoch 0 step 1;" in out, out
    attempts = json.loads((tmp_path / "runs/early/run.json").read_text())["attempts"]
    assert [(a["status"], a["exit"]) for a in attempts] == [("STOPPED", 75)]
    assert (tmp_path / "runs/early/checkpoints/last.pt").exists()


# ------------------------------------------------------------------------------------ the recipe configs

def first_comment_command(path):
    lines = path.read_text().splitlines()
    return next(line for line in lines if line.lstrip("# ").startswith("sbatch slurm/"))


@pytest.mark.parametrize("name", RECIPE_CONFIGS)
def test_recipe_config_dry_run(name, digits_shards, tmp_path, capsys):
    """Each config starts with the command that launches it and passes --dry-run (the CLI's own
    code path) with a data set of its task and a weights file."""
    from imgtrain.engine.cli import main
    path = ROOT / "jobs/configs" / f"{name}.yaml"
    assert path.read_text().startswith("#") and f"sbatch slurm/{name}.sbatch" in first_comment_command(path)
    assert (ROOT / "slurm" / f"{name}.sbatch").is_file()
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    if name == "ava_vit":  # needs a score_distribution data set: the manifest's task is what preflight checks
        data = tmp_path / "ava"
        data.mkdir()
        manifest = json.loads((digits_shards / "manifest.json").read_text())
        manifest.update(task="score_distribution", bins=list(range(1, 11)))
        (data / "manifest.json").write_text(json.dumps(manifest))
    else:
        data = digits_shards
    overrides = [f"data.path={data}", f"output.root={tmp_path}", f"model.pretrained_path={weights}"]
    if name != "cifar10_convmixer":  # pretrained weights must be given
        with pytest.raises(C.ConfigError, match="missing required value 'model.pretrained_path'"):
            C.load(path, [f"data.path={data}"])
    assert main(["--config", str(path), *overrides, "--dry-run"]) == 0, capsys.readouterr().err
    assert f"run dir: {tmp_path}/runs/{name}-" in capsys.readouterr().out
    # a tiny model passes as well (what the cluster tests train)
    assert main(["--config", str(path), *overrides, "model.name=mlp", "model.pretrained_path=null",
                 "--dry-run"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ava_vit", "cifar100_vit_finetune", "clipart_vgg19", "cifar10_convmixer"])
def test_recipe_config_builds_its_model(name):
    """The real architecture of each recipe builds, and its transfer settings (re-initialised layers,
    lr groups) match real parameter names."""
    from imgtrain import models
    cfg = C.load(ROOT / "jobs/configs" / f"{name}.yaml", ["model.pretrained_path=null"])
    model = models.create_model(cfg.model, num_classes=10, in_chans=3, img_size=cfg.data.img_size)
    models.apply_transfer(model, cfg.model)
    groups = models.param_groups(model, cfg.optim, cfg.model)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    if name == "clipart_vgg19":
        scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
        assert scale["features.0.weight"] == 1.0 and scale["features.5.weight"] == 0.1
        assert scale["features.16.weight"] == 0.1 and scale["features.34.weight"] == 0.3
        assert scale["head.fc.weight"] == 1.0 and cfg.trainer.patience == 3
