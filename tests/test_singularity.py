"""Apptainer cannot be installed here: parse Singularity.def and check what it copies exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sections(text):
    header, out, name = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name:
            out[name].append(line)
        elif line.strip():
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, out


def test_definition_is_complete():
    header, secs = sections((ROOT / "Singularity.def").read_text())
    assert header["Bootstrap"] == "docker"
    torch_pin = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert header["From"].startswith(f"pytorch/pytorch:{torch_pin}-cuda"), "base image must carry the pinned torch"
    for name in ("help", "files", "environment", "post", "runscript", "test", "labels"):
        assert name in secs and any(line.strip() for line in secs[name]), f"%{name} missing or empty"
    assert any("requirements.txt" in line for line in secs["post"])


def test_every_copied_file_exists():
    _, secs = sections((ROOT / "Singularity.def").read_text())
    copied = [line.split()[0] for line in secs["files"] if line.strip()]
    assert "requirements.txt" in copied and "imgtrain" in copied
    for src in copied:
        assert (ROOT / src).exists(), f"Singularity.def copies {src}, which is not in the repository"


def test_runscript_dispatches_to_existing_jobs():
    _, secs = sections((ROOT / "Singularity.def").read_text())
    run = "\n".join(secs["runscript"])
    assert "/opt/imgtrain/jobs/$cmd.py" in run and "python -m shards" in run
    assert (ROOT / "jobs/train.py").exists()


def test_test_section_imports_every_package():
    _, secs = sections((ROOT / "Singularity.def").read_text())
    test = "\n".join(secs["test"])
    for pkg in ("imgtrain", "shards", "torch", "timm", "deepspeed", "webdataset", "submitit", "pyarrow"):
        assert re.search(rf"\b{pkg}\b", test), pkg
    for sub in sorted(p.name for p in (ROOT / "imgtrain").iterdir() if (p / "__init__.py").exists()):
        assert f"imgtrain.{sub}" in test, f"%test does not import imgtrain.{sub}"
