"""Issue 20, "fail loudly, never hang, never mix": a resume onto changed data, a diverging loss, a validation
split or monitor that does not exist, start-up errors before the run directory exists, lost checkpoints of a
run with progress, a full disk, and log rows identical across a resume."""
import json
import os
import shutil

import pytest

from conftest import ROOT, pack_in_process, run_cmd, train_cmd

CFG = ROOT / "tests/configs/tiny_digits.yaml"


def overrides(data, root, run="r", *extra):
    return [f"data.path={data}", f"output.root={root}", f"output.run={run}", "trainer.epochs=1", *extra]


def attempts(rdir):
    return [a["status"] for a in json.loads((rdir / "run.json").read_text())["attempts"]]


def no_traceback(text):
    return "Traceback" not in text


# ----------------------------------------------------------------------------- A: data fingerprint

@pytest.fixture(scope="module")
def other_digits(tmp_path_factory):
    """The same digits packed with other options (other shards): another data set fingerprint."""
    return pack_in_process("digits", "-", tmp_path_factory.mktemp("other") / "digits16", "--upscale", "16",
                           "--shard-size", "200")


@pytest.mark.slow  # trains (about 8-12 s here): the full suite, not the fast tier
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_resume_onto_other_data_is_refused_naming_both_fingerprints(digits_shards, other_digits, tmp_path,
                                                                    strategy):
    from shards.manifest import load_manifest
    from imgtrain.data.memory import manifest_hash
    data = tmp_path / "data"
    shutil.copytree(digits_shards, data)
    args = overrides(data, tmp_path, "r", "data.batch_size=8", f"dist.strategy={strategy}")
    stopped = run_cmd(train_cmd(CFG, *args), env={"IMGTRAIN_TEST_SIGNAL_AT_STEP": "5"}, check=False)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    shutil.rmtree(data)
    shutil.copytree(other_digits, data)  # a hand copy of the data set packed otherwise, into the same folder
    old, new = manifest_hash(load_manifest(digits_shards)), manifest_hash(load_manifest(other_digits))
    assert old != new
    resumed = run_cmd(train_cmd(CFG, *args), check=False)
    assert resumed.returncode == 1, resumed.stderr[-3000:]
    line = next(x for x in resumed.stderr.splitlines() if "data fingerprint" in x)
    assert old in line and new in line and str(data) in line
    assert no_traceback(resumed.stderr)
    assert attempts(tmp_path / "runs/r") == ["STOPPED", "FAILED"]
    assert "data fingerprint" in (tmp_path / "runs/r/FAILED").read_text()


# ----------------------------------------------------------------------------- B: a non-finite loss stops the run

@pytest.mark.slow  # trains (about 8-12 s here): the full suite, not the fast tier
def test_a_diverging_loss_fails_naming_the_step(digits_shards, tmp_path):
    args = overrides(digits_shards, tmp_path, "nan", "optim.lr=1e12", "sched.warmup_epochs=0")
    proc = run_cmd(train_cmd(CFG, *args), check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if "non-finite training loss" in x)
    assert no_traceback(proc.stderr) and "at step " in line and "max_nonfinite_steps=0" in line
    first = int(line.split("at step ")[1].split()[0])
    assert first > 1  # it diverged while training, not at the start
    rdir = tmp_path / "runs/nan"
    assert "non-finite training loss" in (rdir / "FAILED").read_text() and attempts(rdir) == ["FAILED"]

    # trainer.max_nonfinite_steps=3: three steps skipped (warned), the fourth stops the run
    tolerant = run_cmd(train_cmd(CFG, *args, "output.run=nan3", "trainer.max_nonfinite_steps=3"), check=False)
    assert tolerant.returncode == 1
    assert tolerant.stderr.count("UserWarning: skipped step") == 3
    line = next(x for x in tolerant.stderr.splitlines() if "[imgtrain] error" in x)
    assert f"at step {first + 3} " in line and "4 non-finite step(s)" in line


def test_max_nonfinite_steps_is_refused_with_deepspeed(digits_shards, tmp_path):
    proc = run_cmd(train_cmd(CFG, *overrides(digits_shards, tmp_path), "dist.strategy=deepspeed",
                             "trainer.max_nonfinite_steps=2", "--dry-run"), check=False)
    assert proc.returncode == 2 and "trainer.max_nonfinite_steps=2 is not supported" in proc.stderr


# ----------------------------------------------------------------------------- C: a split or monitor that does not exist

@pytest.mark.slow  # trains (about 8-12 s here): the full suite, not the fast tier
@pytest.mark.parametrize("dry_run", [True, False])
def test_missing_val_split_and_unknown_monitor_are_config_errors(digits_shards, tmp_path, dry_run):
    extra = ["--dry-run"] if dry_run else []
    split = run_cmd(train_cmd(CFG, *overrides(digits_shards, tmp_path), "data.val_split=valid", *extra), check=False)
    assert split.returncode == 2, split.stderr[-3000:]
    assert "data.val_split" in split.stderr and "no split 'valid'" in split.stderr
    assert "test, train, val" in split.stderr and no_traceback(split.stderr)
    mon = run_cmd(train_cmd(CFG, *overrides(digits_shards, tmp_path), "trainer.monitor=val/acc", *extra),
                  check=False)
    assert mon.returncode == 2, mon.stderr[-3000:]
    assert "trainer.monitor: no metric 'val/acc'" in mon.stderr and "val/acc1" in mon.stderr
    assert "train/epoch_loss" in mon.stderr and no_traceback(mon.stderr)
    assert not (tmp_path / "runs").exists()
    ok = run_cmd(train_cmd(CFG, *overrides(digits_shards, tmp_path), "trainer.monitor=val/f1", "--dry-run"))
    assert "run id" in ok.stdout


# ----------------------------------------------------------------------------- D: start-up errors before the run dir

@pytest.mark.parametrize("bad", ["model.name=no_such_model", "data.path={tmp}/missing", "data.path={tmp}/empty"])
def test_startup_errors_exit_2_before_the_run_directory_exists(digits_shards, tmp_path, bad):
    (tmp_path / "empty").mkdir()
    proc = run_cmd(train_cmd(CFG, *overrides(digits_shards, tmp_path), bad.format(tmp=tmp_path)), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("config check failed:") and no_traceback(proc.stderr)
    assert len(proc.stderr.splitlines()) <= 4, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_locked_run_is_one_line_exit_1(digits_shards, tmp_path):
    from shards.dirlock import acquire
    rdir = tmp_path / "runs/r"
    rdir.mkdir(parents=True)
    lock = acquire(rdir / "LOCK", what="run r")  # this (live) process holds the run
    try:
        proc = run_cmd(train_cmd(CFG, *overrides(digits_shards, tmp_path)), check=False)
    finally:
        lock.release()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert no_traceback(proc.stderr)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("[imgtrain] error: ") and str(os.getpid()) in lines[0], lines
    assert not (rdir / "FAILED").exists() and not (rdir / "run.json").exists()


def test_too_many_bad_samples_is_one_line_and_failed_keeps_the_traceback(digits_shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_shards, data)
    shard = data / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    proc = run_cmd(train_cmd(CFG, *overrides(data, tmp_path, "strict")), check=False)
    assert proc.returncode == 1 and no_traceback(proc.stderr), proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("[imgtrain] error: "))
    assert "exceed data.max_bad_fraction=0.01" in line and "train-000000.tar" in line
    failed = (tmp_path / "runs/strict/FAILED").read_text()
    assert "Traceback" in failed and "exceed data.max_bad_fraction" in failed


# ----------------------------------------------------------------------------- E: all checkpoints deleted

@pytest.mark.slow  # trains (about 8-12 s here): the full suite, not the fast tier
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_deleted_checkpoints_of_a_run_with_progress_are_refused(digits_shards, tmp_path, strategy):
    args = overrides(digits_shards, tmp_path, "r", "data.batch_size=8", f"dist.strategy={strategy}")
    stopped = run_cmd(train_cmd(CFG, *args), env={"IMGTRAIN_TEST_SIGNAL_AT_STEP": "5"}, check=False)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    rdir = tmp_path / "runs/r"
    assert json.loads((rdir / "run.json").read_text())["checkpoint_step"] == 5
    shutil.rmtree(rdir / "checkpoints")  # last.pt and last.prev.pt (or every DeepSpeed tag) gone
    proc = run_cmd(train_cmd(CFG, *args), check=False)
    assert proc.returncode == 1 and no_traceback(proc.stderr), proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("[imgtrain] error: "))
    assert "has progress" in line and "step 5" in line and "refusing to start over" in line
    assert "output.run=NEW_ID" in line and str(rdir) in line
    assert attempts(rdir) == ["STOPPED", "FAILED"]


# ----------------------------------------------------------------------------- F: disk full while training

@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_a_full_disk_while_training_leaves_no_temporary_checkpoint_and_is_failed(digits_shards, tmp_path, strategy):
    """RLIMIT_FSIZE makes a write fail with EFBIG as a full disk does with ENOSPC: the same OSError path. The
    limit lets the small files through (run.json, metrics, FAILED) and stops the checkpoint."""
    import resource
    import signal
    import subprocess

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    cmd = [str(c) for c in train_cmd(CFG, *overrides(digits_shards, tmp_path, "r", "trainer.ckpt_every_steps=5",
                                                     "model.width=[256]", "data.cache=none",
                                                     f"dist.strategy={strategy}"))]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300, preexec_fn=small_files)
    rdir = tmp_path / "runs/r"
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = (rdir / "FAILED").read_text()
    # the checkpoint's write failed (torch's zip writer may report EFBIG as a bad position)
    assert ("File too large" in failed and "atomic_save" in failed) if strategy == "ddp" else \
        "save_checkpoint" in failed
    assert attempts(rdir) == ["FAILED"]
    leftovers = [str(p.relative_to(rdir)) for p in rdir.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert not leftovers, leftovers


# ----------------------------------------------------------------------------- G: log rows identical across a resume

@pytest.mark.slow  # trains (about 8-12 s here): the full suite, not the fast tier
def test_every_logged_value_is_the_same_after_a_resume_between_log_rows(digits_shards, tmp_path):
    """The train loss row averages a window of trainer.log_every_steps steps: a stop inside a window (step 10,
    rows at 7 and 14) must not change the row after the resume, nor acc1, skipped or the epoch loss."""
    from test_fault_tolerance import comparable_metrics, same_weights
    args = lambda root: overrides(digits_shards, root, "g", "trainer.epochs=2", "trainer.log_every_steps=7",
                                  "trainer.ckpt_every_steps=5", "data.num_workers=2")
    run_cmd(train_cmd(CFG, *args(tmp_path / "a")))
    stopped = run_cmd(train_cmd(CFG, *args(tmp_path / "b")), env={"IMGTRAIN_TEST_SIGNAL_AT_STEP": "10"},
                      check=False)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    run_cmd(train_cmd(CFG, *args(tmp_path / "b")))
    a, b = tmp_path / "a/runs/g", tmp_path / "b/runs/g"
    assert same_weights(a, b)
    rows_a, rows_b = comparable_metrics(a), comparable_metrics(b)
    assert any(r["metric"] == "loss" and r["step"] == 14 for r in rows_a)
    assert rows_a == rows_b
