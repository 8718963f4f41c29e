"""`jobs/train.py` answers `--help` and a config error without importing torch (issue 20: it took 3.6 s
and 1,245 torch modules before it even read its arguments)."""
import subprocess

from conftest import PY, ROOT


def torch_imports(args: list[str]) -> tuple[int, str, list[str]]:
    """Run jobs/train.py ARGS with `-X importtime`: (exit status, stdout, the torch modules it imported)."""
    proc = subprocess.run([PY, "-X", "importtime", str(ROOT / "jobs/train.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return proc.returncode, proc.stdout, [m for m in imported if m.split(".")[0] in ("torch", "timm", "torchvision")]


def test_help_imports_no_torch():
    rc, out, heavy = torch_imports(["--help"])
    assert rc == 0 and "--config" in out and "--dry-run" in out
    assert heavy == [], heavy[:10]


def test_config_error_imports_no_torch():
    rc, _, heavy = torch_imports(["--config", "jobs/configs/digits.yaml", "trainer.no_such_key=1"])
    assert rc == 2
    assert heavy == [], heavy[:10]
    rc, _, heavy = torch_imports(["--config", "jobs/configs/no_such_config.yaml"])
    assert rc == 2
    assert heavy == [], heavy[:10]
