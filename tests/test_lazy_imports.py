"""imgtrain.data, imgtrain.models and imgtrain.tasks import no torch (issue 19): torch-free callers (launcher,
sweeps, analysis, the training CLI's --help) import the real packages, whose torch-backed names are imported
on first use (PEP 562 `__getattr__`). Each check runs in a fresh interpreter: this one has torch already."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("torch", "timm", "torchvision", "cv2", "PIL")


def fresh(code: str) -> dict:
    """Run `code` in a new interpreter; it defines `heavy()` (the heavy packages imported so far) and prints
    one JSON object, returned."""
    prelude = f"import json, sys\ndef heavy(): return sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
    proc = subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_packages_import_no_torch():
    out = fresh("import imgtrain.data, imgtrain.models, imgtrain.tasks\n"
                "first = heavy()\n"
                "import imgtrain.runs, imgtrain.analysis, imgtrain.sweep\n"
                "print(json.dumps({'first': first, 'all': heavy()}))")
    assert out["first"] == [], out  # nor timm, torchvision, cv2, PIL
    assert not {"torch", "timm", "torchvision"} & set(out["all"]), out


def test_torch_free_names_work_without_torch(digits_shards):
    out = fresh(f"""
from types import SimpleNamespace as NS
from imgtrain.data import DatasetInfo, TrainPlan, cache_root, data_root, dataset_info, epoch_order, eval_positions
from imgtrain.tasks import build, metric_mode
from imgtrain.tasks.base import monitor_default, softmax
cfg = NS(data=NS(path={str(digits_shards)!r}, train_split="train"), task=NS(name="classification"))
info = dataset_info(cfg)
order = epoch_order([3, 2], seed=0, epoch=0, buffer=2)
print(json.dumps({{"heavy": heavy(), "root": str(data_root(cfg)), "classes": info.num_outputs,
                  "isinfo": isinstance(info, DatasetInfo), "order": sorted(order.tolist()),
                  "modes": [metric_mode("val/loss"), metric_mode("val/acc1")],
                  "monitor": monitor_default("score_distribution"), "p": softmax([[0.0, 0.0]]).tolist()}}))
""")
    assert out["heavy"] == [], out
    assert out["root"] == str(digits_shards) and out["classes"] == 10 and out["isinfo"]
    assert out["order"] == [0, 1, 2, 3, 4] and out["modes"] == ["min", "max"]
    assert out["monitor"] == ["val/emd", "min"] and out["p"] == [[0.5, 0.5]]


@pytest.mark.parametrize("use, expect", [
    ("from imgtrain.data import ShardSplit; name = ShardSplit.__module__", "imgtrain.data.loader"),
    ("import imgtrain.data; name = imgtrain.data.Normalizer.__module__", "imgtrain.data.transforms"),
    ("import imgtrain.tasks; name = imgtrain.tasks.ClassificationTask.__module__", "imgtrain.tasks.classification"),
    ("from imgtrain.tasks import build; from imgtrain.config import TaskConfig\n"
     "name = type(build(TaskConfig(), 10)).__module__", "imgtrain.tasks.classification"),
    ("from imgtrain.tasks import build; from imgtrain.config import TaskConfig\n"
     "name = type(build(TaskConfig(name='score_distribution', loss='emd'), 10)).__module__",
     "imgtrain.tasks.score_distribution"),
    ("import imgtrain.models; name = imgtrain.models.create_model.__module__", "imgtrain.models.registry"),
])
def test_a_lazy_name_imports_torch_when_used(use, expect):
    out = fresh(f"import imgtrain.data, imgtrain.models, imgtrain.tasks\nbefore = heavy()\n{use}\n"
                "print(json.dumps({'before': before, 'after': heavy(), 'name': name}))")
    assert out["before"] == [] and "torch" in out["after"] and out["name"] == expect, out


def test_the_registry_knows_the_local_nets_however_it_is_imported():
    """The local nets register when small.py is imported; the package no longer imports it, so the registry
    does (sweep preflight and the training CLI import imgtrain.models.registry directly)."""
    out = fresh("from imgtrain.models.registry import check_name, is_local, list_models\ncheck_name('simple_cnn')\n"
                "print(json.dumps({'local': is_local('mlp'), 'names': list_models('keras_cnn_*', include_timm=False),"
                " 'timm': 'timm' in sys.modules}))")
    assert out["local"] and out["timm"] and out["names"] == ["keras_cnn_base", "keras_cnn_improved"], out
    out = fresh("import imgtrain.models.small\nfrom imgtrain import models\n"
                "print(json.dumps({'local': models.is_local('convmixer') and models.registry.is_local('airbench')}))")
    assert out["local"]


@pytest.mark.parametrize("package", ["imgtrain.data", "imgtrain.models", "imgtrain.tasks"])
def test_every_exported_name_resolves(package):
    import importlib
    mod = importlib.import_module(package)
    for name in mod.__all__:
        value = getattr(mod, name)
        assert value is not None and name in dir(mod)
        if name in mod._LAZY:  # the defining module's object, cached on the package
            assert value is getattr(importlib.import_module(f"{package}.{mod._LAZY[name]}"), name)
            assert name in vars(mod)
    namespace: dict = {}
    exec(f"from {package} import *", namespace)
    assert set(mod.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(mod, "no_such_name")
    for sub in mod._SUBMODULES:
        assert getattr(mod, sub).__name__ == f"{package}.{sub}"
