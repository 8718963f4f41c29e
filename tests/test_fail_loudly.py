"""Issue 20, "fail loudly, never hang, never mix": a resume onto changed data, a diverging loss, a validation
split or monitor that does not exist, start-up errors before the run directory exists, lost checkpoints of a
run with progress, a full disk, and log rows identical across a resume."""
import json
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
