"""`python jobs/sweep.py GRID --dry-run` runs the preflight a submission would run, on the cells it would
submit, and says so in its last line (issue 20: the dry run skipped it, so a missing data set or a
misspelt model passed the dry run and failed the real submission)."""
import yaml

from conftest import PY, ROOT, run_cmd

CFG = ROOT / "tests/configs/tiny_digits.yaml"
SWEEP = [PY, ROOT / "jobs/sweep.py"]


def dry_run(tmp_path, data, *extra, grid=None):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "config": str(CFG), "overrides": {"data.path": str(data)},
                                    "grid": grid or {"optim.lr": [0.1, 0.2]}}))
    return run_cmd([*SWEEP, path, "--dry-run", "--root", tmp_path / "out", *extra], check=False)


def test_dry_run_fails_where_a_submission_would(tmp_path):
    proc = dry_run(tmp_path, tmp_path / "no-such-set")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("sweep g: 2 cells") and "(total 2)" in lines[-2]  # the table is still shown
    assert lines[-1].startswith("preflight: FAILED for the 2 cell(s) a submission would run")
    assert "preflight failed, nothing would be submitted" in proc.stderr
    assert "data.path" in proc.stderr and "no-such-set" in proc.stderr
    assert not (tmp_path / "out").exists()  # still a dry run: no records, no runs


def test_dry_run_checks_the_model_names_too(digits_shards, tmp_path):
    proc = dry_run(tmp_path, digits_shards, grid={"model.name": ["mlp", "resnet5O"]})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    problems = [line for line in proc.stderr.splitlines() if line.startswith("  cell ")]
    assert len(problems) == 1 and "unknown model 'resnet5O'" in problems[0], proc.stderr  # mlp passes


def test_dry_run_passes_the_preflight_and_says_so(digits_shards, tmp_path):
    proc = dry_run(tmp_path, digits_shards)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("preflight: ok for the 2 cell(s) a submission would run")
    assert not (tmp_path / "out").exists()


def test_dry_run_without_preflight_says_it_skipped_it(tmp_path):
    proc = dry_run(tmp_path, tmp_path / "no-such-set", "--no-preflight")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "preflight: skipped (--no-preflight)"
