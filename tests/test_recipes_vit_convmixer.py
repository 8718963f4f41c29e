"""Smoke runs of the recipes of two reference studies (issue 10): the AVA/CIFAR ViT and ConvMixer study
(cifar10_vit, cifar10_convmixer, cifar100_vit_finetune, cifar100[_coarse]_convmixer_finetune, ava_vit,
ava_convmixer and their _emd variants) and the MobileViT transfer study (mobilevit_twoclass,
mobilevit_tinyimagenet).

Each recipe's own YAML trains one short epoch through `jobs/train.py`'s main() on tiny data written in
its real source format and packed with `python -m shards pack` (shards.cli.main, the same argv), with
only size overrides (a tiny ViT / ConvMixer / MobileViT, 16-32 px, small batches, fp32, no workers).
Fine-tune recipes load a randomly initialised tiny model's weights from a local .safetensors file, with a
head of another size, as an ImageNet checkpoint would have. Every source is packed once per module and
the runs share one process, so the last test checks that runs in one process do not leak into each other.
"""
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, pack_in_process
from imgtrain import config as C
from imgtrain import models
from imgtrain.engine import trainer as T
from imgtrain.engine.cli import main as train_main
from imgtrain.logs import read_metrics, read_summaries
from sourcedata import write_ava, write_cifar10, write_cifar100, write_imagefolder, write_tinyimagenet

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # every test trains a model or builds a full-size one

CONFIGS = ROOT / "jobs" / "configs"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
COMMON = ["trainer.epochs=1", "data.batch_size=8", "data.num_workers=0", "trainer.precision=fp32",
          "trainer.log_every_seconds=0"]
TINY = {
    "vit": ["model.name=vit_tiny_patch16_224", "model.img_size=16", "model.patch_size=8", "data.img_size=16",
            "model.kwargs={depth: 2, embed_dim: 32, num_heads: 2}"],
    "convmixer": ["model.name=convmixer", "model.dim=16", "model.depth=2", "model.kernel_size=3",
                  "model.patch_size=4", "data.img_size=16"],
    "mobilevit": ["model.name=mobilevit_xxs", "data.img_size=32"],
}


def pack(kind, src, out, *options) -> Path:
    return pack_in_process(kind, src, out, "--shard-size", "32", *options)


# ------------------------------------------------------------------- one pack per source format

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Packed data sets by name, each made on first use (the recipe's own pack options)."""
    base = tmp_path_factory.mktemp("recipe_data")
    made = {}

    def make(name):
        src = base / "src" / name
        if name == "cifar10":  # 10 per class: 1 per class carved as val
            return pack("cifar10", write_cifar10(src, n_per_batch=10, n_test=10), base / name)
        if name in ("cifar100", "cifar100_coarse"):  # 10 fine classes, 10 images each; superclass = fine // 5
            root = src.parent / "cifar100"
            if not root.exists():
                write_cifar100(root, n_train=100, n_test=20, n_fine=10)
            return pack("cifar100", root / "cifar-100-python", base / name,
                        *(["--coarse"] if name == "cifar100_coarse" else []))
        if name == "ava":
            return pack("ava", write_ava(src, n=40).root, base / name, "--test-fraction", "0.1")
        if name == "twoclass":  # imbalanced, 18 : 6, so that balanced class weights differ from 1
            write_imagefolder(src, classes=("generated",), n_per_class=18, seed=5)
            write_imagefolder(src, classes=("photo",), n_per_class=6, seed=6)
            return pack("imagefolder", src, base / name, "--val-fraction", "0.1", "--test-fraction", "0.2")
        if name == "tinyimagenet":
            return pack("tinyimagenet", write_tinyimagenet(src, n_classes=3, n_train=6, n_val=2), base / name)
        raise KeyError(name)

    def get(name):
        if name not in made:
            made[name] = make(name)
        return made[name]
    return get


@pytest.fixture
def spy(monkeypatch):
    """The Trainer objects and load_pretrained results of the runs a test starts."""
    seen = {"trainers": [], "loaded": []}

    class Recorded(T.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["trainers"].append(self)

    real_load = models.load_pretrained

    def load_pretrained(*args, **kwargs):
        out = real_load(*args, **kwargs)
        seen["loaded"].append(out)
        return out

    monkeypatch.setattr(T, "Trainer", Recorded)
    monkeypatch.setattr(models, "load_pretrained", load_pretrained)
    return seen


def tiny_weights(recipe, size, path: Path) -> Path:
    """A randomly initialised tiny model of the recipe (7 classes: the head is replaced on loading)."""
    cfg = C.load(CONFIGS / f"{recipe}.yaml", ["model.pretrained_path=unused", *TINY[size]])
    model = models.create_model(cfg.model, num_classes=7, in_chans=3, img_size=cfg.data.img_size)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def smoke(recipe, size, data_dir, root, *extra, weights=None):
    """Train the recipe's YAML one short epoch; returns (run dir, {split/metric: last value}, summary row)."""
    overrides = [f"data.path={data_dir}", f"output.root={root}", *COMMON, *TINY[size], *extra]
    if weights is not None:
        overrides.append(f"model.pretrained_path={weights}")
    assert train_main(["--config", str(CONFIGS / f"{recipe}.yaml"), *overrides]) == 0
    (rdir,) = (root / "runs").iterdir()
    assert rdir.name.startswith(f"{recipe}-") and (rdir / "DONE").exists()
    assert (rdir / "checkpoints" / "best.pt").exists()
    rows = read_metrics(root).to_pylist()
    metrics = {f"{r['split']}/{r['metric']}": r["value"] for r in rows}
    (summary,) = read_summaries(root).to_pylist()
    assert summary["status"] == "DONE" and summary["steps"] >= 1
    return rdir, metrics, summary


def the_trainer(spy):
    (trainer,) = spy["trainers"]
    return trainer


def assert_loaded(spy, trainer):
    """The local weights file went into the model; only the 7-class head was left out."""
    (loaded,) = spy["loaded"]
    assert loaded["head_dropped"] and len(loaded["loaded"]) > 4
    n_params = sum(1 for k in trainer.model.state_dict() if not k.endswith("num_batches_tracked"))
    assert len(loaded["loaded"]) + len(loaded["head_dropped"]) >= n_params


def assert_norm(trainer, mean, std):
    """The run normalises its uint8 batches with this mean and std."""
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    expected = (x.double() / 255 - torch.tensor(mean, dtype=torch.double).view(1, 3, 1, 1)) / \
        torch.tensor(std, dtype=torch.double).view(1, 3, 1, 1)
    assert torch.allclose(trainer.normalize(x).double(), expected, atol=1e-4)


# ------------------------------------------------------------------- the real architectures

@pytest.mark.parametrize("recipe", ["cifar10_vit", "cifar100_convmixer_finetune", "mobilevit_twoclass"])
def test_recipe_architecture_builds_and_takes_imagenet_layout_weights(recipe, tmp_path):
    """The smoke runs below use tiny models; here each new recipe's own architecture (the ConvMixer recipes
    share one, and so do the MobileViT ones) is built as configured and runs, and the
    fine-tune ones load a 1000-class checkpoint of the same timm architecture (the layout of the released
    ImageNet weights) with only the head left out."""
    cfg = C.load(CONFIGS / f"{recipe}.yaml", ["model.pretrained_path=w"])
    model = models.create_model(cfg.model, num_classes=10, in_chans=3, img_size=cfg.data.img_size)
    if recipe != "cifar10_vit":
        imagenet = models.create_model(cfg.model, num_classes=1000, in_chans=3, img_size=cfg.data.img_size)
        path = tmp_path / "imagenet.safetensors"
        save_file({k: v.contiguous() for k, v in imagenet.state_dict().items()}, str(path))
        del imagenet
        out = models.load_pretrained(model, path, 10)
        assert out["head_dropped"] and not out["ignored"]
    size = cfg.data.img_size if recipe == "cifar10_vit" else 64  # ViT's is fixed; the others run any size
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, size, size)).shape == (1, 10)


# ------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("recipe,size", [("cifar10_vit", "vit"), ("cifar10_convmixer", "convmixer")])
def test_cifar10_from_scratch(recipe, size, data, spy, tmp_path):
    cfg = C.load(CONFIGS / f"{recipe}.yaml")
    assert (cfg.optim.lr, cfg.model.pretrained_path, cfg.task.name) == (1e-3, None, "classification")
    study = {"cifar10_vit": (256, 20), "cifar10_convmixer": (128, 10)}[recipe]
    assert (cfg.data.batch_size, cfg.trainer.epochs) == study
    rdir, m, _ = smoke(recipe, size, data("cifar10"), tmp_path)
    trainer = the_trainer(spy)
    assert not spy["loaded"] and trainer.num_classes == 10
    stats = trainer.info.manifest["image_stats"]  # from scratch: normalised by the data set's statistics
    assert_norm(trainer, stats["mean"], stats["std"])
    for key in ("train/loss", "val/acc1", "val/acc5", "test/acc1", "test/f1"):
        assert np.isfinite(m[key]), key


@pytest.mark.parametrize("recipe,size", [("cifar100_vit_finetune", "vit"),
                                         ("cifar100_convmixer_finetune", "convmixer")])
def test_cifar100_finetune_from_local_weights(recipe, size, data, spy, tmp_path):
    cfg = C.load(CONFIGS / f"{recipe}.yaml", ["model.pretrained_path=w"])
    assert cfg.optim.lr == 1e-5 and cfg.data.img_size == 224
    assert (cfg.model.name, cfg.data.batch_size, cfg.trainer.epochs) == {
        "cifar100_vit_finetune": ("vit_base_patch32_224", 256, 30),
        "cifar100_convmixer_finetune": ("convmixer_768_32", 32, 20)}[recipe]
    weights = tiny_weights(recipe, size, tmp_path / "w.safetensors")
    _, m, _ = smoke(recipe, size, data("cifar100"), tmp_path / "out", weights=weights)
    trainer = the_trainer(spy)
    assert_loaded(spy, trainer)
    assert trainer.num_classes == 100  # every fine class of the meta file
    norm = models.data_config(trainer.model, pretrained=True)
    assert_norm(trainer, norm["mean"], norm["std"])  # the weights' own normalisation
    assert np.isfinite(m["val/acc1"]) and np.isfinite(m["test/acc1"])


def test_cifar100_superclasses(data, spy, tmp_path):
    recipe = "cifar100_coarse_convmixer_finetune"
    cfg = C.load(CONFIGS / f"{recipe}.yaml", ["model.pretrained_path=w"])
    base = C.load(CONFIGS / "cifar100_convmixer_finetune.yaml", ["model.pretrained_path=w"])
    assert cfg.data.path.endswith("cifar100_coarse") and (cfg.model, cfg.optim) == (base.model, base.optim)
    weights = tiny_weights(recipe, "convmixer", tmp_path / "w.safetensors")
    rdir, m, _ = smoke(recipe, "convmixer", data("cifar100_coarse"), tmp_path / "out", weights=weights)
    trainer = the_trainer(spy)
    assert_loaded(spy, trainer)
    assert trainer.num_classes == 20 and trainer.model.get_classifier().out_features == 20
    results = json.loads((rdir / "test_results.json").read_text())
    cm = np.array(results["confusion_matrix"])
    # the 20 test images have fine labels i % 10, so superclasses 0 and 1 hold 10 each
    assert cm.shape == (20, 20) and cm.sum(axis=1).tolist() == [10, 10] + [0] * 18
    assert len(results["class_names"]) == 20 and "acc_class/19" in {k.split("/", 1)[1] for k in m}


# ------------------------------------------------------------------- AVA

@pytest.mark.parametrize("recipe,size,loss", [("ava_vit", "vit", "mse"), ("ava_vit_emd", "vit", "emd"),
                                              ("ava_convmixer", "convmixer", "mse"),
                                              ("ava_convmixer_emd", "convmixer", "emd")])
def test_ava(recipe, size, loss, data, spy, tmp_path):
    cfg = C.load(CONFIGS / f"{recipe}.yaml", ["model.pretrained_path=w"])
    assert (cfg.task.name, cfg.task.loss, cfg.trainer.monitor) == ("score_distribution", loss, "val/loss")
    assert cfg.trainer.patience is not None  # best epoch kept, early stopping
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.trainer.epochs) == {
        "vit": (64, 1e-6, 10), "convmixer": (16, 1e-5, 20)}[size]
    weights = tiny_weights(recipe, size, tmp_path / "w.safetensors")
    _, m, summary = smoke(recipe, size, data("ava"), tmp_path / "out", weights=weights)
    trainer = the_trainer(spy)
    assert_loaded(spy, trainer)
    assert trainer.num_classes == 10 and trainer.task.loss_name == loss
    for split in ("val", "test"):
        for metric in ("emd", "mse", "srcc", "lcc", "acc"):
            assert f"{split}/{metric}" in m
        assert m[f"{split}/loss"] == m[f"{split}/{loss}"]  # the loss the recipe trains with
    assert summary["monitor"] == "val/loss" and summary["best"] == m["val/loss"]


# ------------------------------------------------------------------- MobileViT

def test_mobilevit_two_classes_balanced(data, spy, tmp_path):
    recipe = "mobilevit_twoclass"
    cfg = C.load(CONFIGS / f"{recipe}.yaml", ["model.pretrained_path=w"])
    assert cfg.model.name == "mobilevit_s" and cfg.task.class_weights == "balanced"
    weights = tiny_weights(recipe, "mobilevit", tmp_path / "w.safetensors")
    shards_dir = data("twoclass")
    # also the GPU-decoding path (data.decode_on=device), here on the CPU: the workers defer every JPEG
    _, m, _ = smoke(recipe, "mobilevit", shards_dir, tmp_path / "out", "data.decode_on=device", weights=weights)
    trainer = the_trainer(spy)
    assert_loaded(spy, trainer)
    assert trainer.train_ds.defer_jpegs and trainer.state.skipped == 0 and trainer.state.images >= 16
    counts = trainer.info.class_counts
    assert trainer.info.class_names == ["generated", "photo"] and counts[0] > counts[1] > 0
    expected = torch.tensor([sum(counts) / (2 * c) for c in counts])
    assert torch.allclose(trainer.task.class_weights, expected)  # n / (2 x count): 0.67 and 2.0
    logits, target = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([1, 0])
    plain = torch.nn.functional.cross_entropy(logits, target)
    assert not torch.isclose(trainer.task.loss(logits, target), plain)  # the weights are in the loss
    # ImageNet statistics, not the (0, 1) of timm's cvnets MobileViT config
    assert trainer.model.pretrained_cfg["mean"] == (0.0, 0.0, 0.0)
    assert_norm(trainer, *IMAGENET)
    assert np.isfinite(m["val/acc1"]) and np.isfinite(m["test/f1"])


def test_mobilevit_tinyimagenet(data, spy, tmp_path):
    recipe = "mobilevit_tinyimagenet"
    weights = tiny_weights(recipe, "mobilevit", tmp_path / "w.safetensors")
    _, m, _ = smoke(recipe, "mobilevit", data("tinyimagenet"), tmp_path / "out", weights=weights)
    trainer = the_trainer(spy)
    assert_loaded(spy, trainer)
    assert trainer.num_classes == 3 and trainer.task.class_weights is None
    assert_norm(trainer, *IMAGENET)
    assert np.isfinite(m["val/acc1"])
    assert not any(k.startswith("test/") for k in m)  # TinyImageNet's test/ has no labels: no test split


# ------------------------------------------------------------------- one process, many runs

def test_runs_in_one_process_are_independent(data, tmp_path):
    """After the runs above in this process: the stop-signal handlers and torch's deterministic-algorithms
    flag are back as they were (a trainer.deterministic run sets it), and the same run gives the same
    weights and metrics whatever ran before it."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    deterministic = torch.are_deterministic_algorithms_enabled()

    def run(root, *extra):
        rdir, m, _ = smoke("cifar10_convmixer", "convmixer", data("cifar10"), root, *extra)
        return torch.load(rdir / "checkpoints" / "last.pt", weights_only=True)["model"], m

    first, m1 = run(tmp_path / "a")
    run(tmp_path / "deterministic", "trainer.deterministic=true")
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    torch.manual_seed(1234)  # global RNG states left by something else
    np.random.seed(99)
    second, m2 = run(tmp_path / "b")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    def steady(m):
        return {k: v for k, v in m.items() if "img_per_s" not in k}
    assert steady(m1) == steady(m2)
    assert {s: signal.getsignal(s) for s in handlers} == handlers
