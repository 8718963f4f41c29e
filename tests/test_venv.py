"""The README's commands create or reuse .venv: jobs/venv.sh reinstalls only when requirements change."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_venv(venv, req):
    env = dict(os.environ, IMGTRAIN_REQUIREMENTS=str(req))
    return subprocess.run(["bash", str(ROOT / "jobs/venv.sh"), str(venv)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_stamp_reuses_and_reinstalls(tmp_path):
    venv, req = tmp_path / "venv", tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\n")
    first = run_venv(venv, req)
    assert first.returncode == 0, first.stderr
    assert "creating" in first.stdout and "installing" in first.stdout
    site = subprocess.run([venv / "bin/python", "-c", "import six, imgtrain, sys; print(six.__version__, imgtrain.__file__)"],
                          capture_output=True, text=True)
    assert site.stdout.split()[0] == "1.16.0"
    assert site.stdout.split()[1].startswith(str(ROOT))  # an editable install: the repository's code
    assert (venv / "bin/imgtrain-train").exists() and (venv / "bin/imgtrain-sweep").exists()  # [project.scripts]

    again = run_venv(venv, req)
    assert again.returncode == 0 and "up to date" in again.stdout and "installing" not in again.stdout

    req.write_text("six==1.16.0\n# changed\n")
    changed = run_venv(venv, req)
    assert changed.returncode == 0 and "installing" in changed.stdout and "creating" not in changed.stdout


def test_failed_install_leaves_no_stamp(tmp_path):
    venv, req = tmp_path / "venv", tmp_path / "requirements.txt"
    # an existing "venv" whose python is this one: no venv creation needed, pip fails on a bad requirement
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").symlink_to(sys.executable)
    req.write_text("this-is-not-a-requirement===\n")
    r = run_venv(venv, req)
    assert r.returncode != 0 and "failed" in r.stderr
    assert not (venv / ".requirements.sha256").exists()


def test_ci_calls_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()
