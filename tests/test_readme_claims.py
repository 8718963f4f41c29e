"""What the README says about the config hash and the venv matches the code (issue 20: it said both that
the hash leaves out paths and that data.path is part of it, and never said `python` means the venv's)."""
import dataclasses
import fnmatch
import re

from conftest import ROOT
from imgtrain import config as C

README = (ROOT / "README.md").read_text()


def volatile_keys(obj=None, prefix=""):
    obj = obj or C.Config()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("volatile"):
            yield prefix + f.name
        elif dataclasses.is_dataclass(value):
            yield from volatile_keys(value, f"{prefix}{f.name}.")


def hash_paragraph() -> str:
    m = re.search(r"The hash covers every key.*?gives the same hash\.", README, re.S)
    assert m, "the README's Configs section no longer states what the config hash covers"
    return m.group(0)


def test_readme_names_every_key_left_out_of_the_hash_and_the_hashed_paths():
    text = hash_paragraph()
    named = re.findall(r"`([\w.*]+)`", text)
    full = [n if n.count(".") else None for n in named]
    for key in volatile_keys():
        section, name = key.split(".", 1)
        ok = any(p and fnmatch.fnmatch(key, p) for p in full) or \
            any(fnmatch.fnmatch(name, p) for p in named if "." not in p)
        assert ok, f"{key} is left out of the hash but the README does not say so"
    assert "`data.path` and `model.pretrained_path` included" in text
    assert README.count("The hash covers") == 1  # stated once
    # and the code agrees: both paths change the hash, an output path does not
    base = C.load(ROOT / "tests/configs/tiny_digits.yaml", ["data.path=/a"])
    for override in ("data.path=/b", "model.pretrained_path=/w.safetensors"):
        assert C.config_hash(C.load(ROOT / "tests/configs/tiny_digits.yaml", ["data.path=/a", override])) != \
            C.config_hash(base), override
    assert C.config_hash(C.load(ROOT / "tests/configs/tiny_digits.yaml", ["data.path=/a", "output.root=/x"])) == \
        C.config_hash(base)


def test_readme_says_python_means_the_venv_before_its_first_python_command():
    first = README.index("python jobs/")
    assert 0 <= README.find(".venv/bin/python") < first or README.find("source .venv/bin/activate") < first
    assert "source .venv/bin/activate" in README[:first] and ".venv/bin/python" in README[:first]
