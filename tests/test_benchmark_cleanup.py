"""Benchmarks leave nothing behind: step_overhead.py wrote ~765 MB (digits shards, checkpoints) under
/tmp on every run and never removed it (issue 20); loader.py already removed its own."""
import os

import pytest

from conftest import PY, ROOT, run_cmd


@pytest.mark.slow
def test_step_overhead_removes_its_temporary_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = run_cmd([PY, ROOT / "benchmarks/step_overhead.py", "--steps", "3", "--repeats", "1", "--batch", "2",
                    "--threads", "1"], env={"TMPDIR": str(tmp)}, timeout=600)
    assert proc.stdout.strip().splitlines()[-1].startswith("ratio: ")
    assert list(tmp.glob("imgtrain-bench-*")) == []  # (torch may leave its own caches there)
