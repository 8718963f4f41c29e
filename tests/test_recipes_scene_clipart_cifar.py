"""Smoke runs of the 15-scene, clip-art VGG-19 and CIFAR-10 recipes (jobs/configs/, jobs/grids/).

Each recipe runs as shipped plus tiny-size overrides only (a tiny timm variant or a small width, 32 px,
one or two short epochs, fp32, no loader workers) on tiny data in its study's source format (grey JPEG
class folders for 15-Scene, RGB PNG/JPEG class folders named as ImageNet classes for clip art, CIFAR-10
python pickles), packed once per module with `python -m shards pack` (in process). Fine-tune recipes load
a temporary .safetensors of a randomly initialised model through model.pretrained_path. Grid recipes are
expanded with the sweep loader (every cell's config is built) and one or two cells are trained the way
`jobs/sweep.py --executor debug` trains them. Trainings run in this process with one torch thread.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import timm
import torch
import yaml
from PIL import Image

from conftest import PY, ROOT, pack_in_process, run_cmd
from sourcedata import image_bytes, photos, write_cifar10
from imgtrain import config as C
from imgtrain.engine import trainer
from imgtrain.engine.cli import main as train_main
from imgtrain.logs import read_metrics, read_summaries
from imgtrain.sweep.spec import load_spec

CONFIGS, GRIDS = ROOT / "jobs/configs", ROOT / "jobs/grids"
FAST = ["data.num_workers=0", "trainer.precision=fp32", "trainer.log_every_steps=1", "data.batch_size=8"]
CLIP_CLASSES = ("airliner", "goldfish", "tabby")  # ImageNet-1k classes 404, 1, 281 (--class-map imagenet)


pytestmark = pytest.mark.usefixtures("one_torch_thread")
pack = pack_in_process


def write_folder(root: Path, classes, n: int, grey: bool, seed: int) -> Path:
    """<root>/<class>/img_NNN.{jpg,png}: real photo crops, grey JPEGs as 15-Scene's, RGB JPEG/PNG as clip art."""
    imgs = iter(photos(len(classes) * n, size=(40, 48), seed=seed))
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            px = next(imgs)
            if grey:
                (root / c / f"img_{i:03d}.jpg").write_bytes(image_bytes(np.asarray(Image.fromarray(px).convert("L")), "jpg"))
            else:
                fmt = ("jpg", "png")[i % 2]
                (root / c / f"img_{i:03d}.{fmt}").write_bytes(image_bytes(px, fmt))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("recipes_data")
    split = ["--val-fraction", "0.25", "--test-fraction", "0.25"]
    return {
        "scene": pack("imagefolder", write_folder(tmp / "15-Scene", ("bedroom", "coast", "forest"), 8, True, 5),
                      tmp / "scene15", *split),
        "clipart": pack("imagefolder", write_folder(tmp / "clipart", CLIP_CLASSES, 8, False, 6), tmp / "clipart_shards",
                        *split),
        "cifar10": pack("cifar10", write_cifar10(tmp, n_per_batch=8, n_test=10), tmp / "cifar10", "--val-fraction", "0.25"),
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("recipes_runs")


def weights(path: Path, name: str, num_classes: int = 1000, **kwargs) -> Path:
    """A randomly initialised model saved as .safetensors: the stand-in for downloaded ImageNet weights."""
    from safetensors.torch import save_file
    from imgtrain.models import create_model
    if not path.exists():
        torch.manual_seed(0)
        model = create_model(C.ModelConfig(name=name, kwargs=kwargs), num_classes=num_classes, in_chans=3, img_size=32)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def load_file(path: Path) -> dict:
    from safetensors.torch import load_file as lf
    return lf(str(path))


def train(config: Path, *overrides: str, code: int = 0) -> None:
    assert train_main(["--config", str(config), *overrides]) == code


def train_cell(grid: Path, data_path: Path, root: Path, pick, *tiny: str, cli=()):
    """Expand a grid (`cli`: the sweep command line's overrides), train the first cell `pick(cell.values)`
    accepts, as the debug executor does (the cell's overrides, then `tiny`). Returns (sweep, cell)."""
    sweep = load_spec(grid, [f"data.path={data_path}", *cli], root=str(root))
    cell = next(c for c in sweep.cells if pick(c.values))
    assert trainer.train(C.load(sweep.config_path, list(cell.overrides) + FAST + list(tiny))).exit_code == 0
    return sweep, cell


def rows(table, split: str, metric: str):
    return table.filter(pc.and_(pc.equal(table["split"], split), pc.equal(table["metric"], metric)))


def values(table, split: str, metric: str) -> list[float]:
    return rows(table, split, metric)["value"].to_pylist()


def assert_done(rdir: Path, classes: int) -> dict:
    """DONE, a summary, and the classification metrics (P/R/F1 included) of val and test in the Parquet logs;
    test precision/recall/F1 equal the macro scores of test_results.json's confusion matrix."""
    assert (rdir / "DONE").is_file(), sorted(p.name for p in rdir.iterdir())
    table = read_metrics(rdir)
    for split in ("val", "test"):
        for m in ("loss", "acc1", "acc5", "precision", "recall", "f1"):
            assert values(table, split, m), f"no {split}/{m}"
    assert values(table, "train", "loss") and all(np.isfinite(values(table, "train", "loss")))
    results = json.loads((rdir / "test_results.json").read_text())
    cm = np.array(results["confusion_matrix"])
    assert cm.shape == (classes, classes) and cm.sum() == results["metrics"]["samples"]
    present = (cm.sum(0) + cm.sum(1)) > 0  # scikit-learn's macro average: classes in labels or predictions
    tp, pred, true = np.diag(cm), cm.sum(0), cm.sum(1)
    p = np.divide(tp, pred, out=np.zeros(classes), where=pred > 0)[present]
    r = np.divide(tp, true, out=np.zeros(classes), where=true > 0)[present]
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    got = results["metrics"]
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p.mean(), r.mean(), f.mean()))
    assert values(table, "test", "f1") == [pytest.approx(got["f1"])]
    summary = read_summaries(rdir).to_pylist()[0]
    assert summary["status"] == "DONE"
    return summary


def checkpoint(rdir: Path, tag: str = "last") -> dict:
    return torch.load(rdir / "checkpoints" / f"{tag}.pt", map_location="cpu", weights_only=True)


def cli(name):
    spec = importlib.util.spec_from_file_location(f"cli_{name}", ROOT / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


# ====================================================================================== 15-Scene

def test_scene_backbones_are_timm_models_with_their_weights_and_input_size():
    """Every backbone of the sweep is a timm 1.0.31 architecture with that pretrained tag (no model is built),
    zipped with a weights file of the same name and the tag's own input size."""
    spec = yaml.safe_load((GRIDS / "scene_backbones.yaml").read_text())
    names, paths, sizes = (spec["zip"][k] for k in ("model.name", "model.pretrained_path", "data.img_size"))
    assert len(names) == len(paths) == len(sizes) == 12
    for name, path, size in zip(names, paths, sizes):
        assert timm.is_model(name) and name in timm.list_pretrained(name.split(".")[0] + ".*"), name
        assert Path(path).name == f"{name}.safetensors"
        assert timm.models.get_pretrained_cfg(name).input_size[-1] == size, name
    archs = {n.split(".")[0] for n in names}
    for keras, arch in {"DenseNet121": "densenet121", "DenseNet169": "densenet169", "DenseNet201": "densenet201",
                        "InceptionResNetV2": "inception_resnet_v2", "InceptionV3": "inception_v3",
                        "MobileNet": "mobilenetv1_100", "MobileNetV2": "mobilenetv2_100", "NASNetLarge": "nasnetalarge",
                        "ResNet50": "resnet50", "VGG16": "vgg16", "VGG19": "vgg19", "Xception": "legacy_xception"}.items():
        assert arch in archs, keras
    assert timm.list_models("nasnet*") == ["nasnetalarge"]  # the grid's comment: no NASNetMobile in timm
    sweep = load_spec(GRIDS / "scene_backbones.yaml", [], root="/nonexistent")
    assert len(sweep.cells) == 24 and {c.config.optim.lr for c in sweep.cells} == {1e-4, 1e-3}
    head = load_spec(GRIDS / "scene_head.yaml", ["model.pretrained_path=w.safetensors"], root="/nonexistent")
    assert len(head.cells) == 24
    assert {(c.config.model.freeze_backbone, c.config.optim.lr) for c in head.cells} == {(False, 3e-4), (True, 3e-3)}
    assert {c.config.model.kwargs["global_pool"] for c in head.cells} == {"avg", "max"}


@pytest.mark.slow
def test_scene_backbone_and_head_cells(data, root, tmp_path_factory):
    """One backbone-sweep cell, and the head sweep's frozen-backbone cell (max pooling, dropout 0.5): its
    backbone ends exactly as loaded (BatchNorm statistics too), only the new classifier learned."""
    w = weights(tmp_path_factory.getbasetemp() / "test_resnet.safetensors", "test_resnet")
    tiny = ["model.name=test_resnet", f"model.pretrained_path={w}", "data.img_size=32", "trainer.epochs=1"]
    sweep, cell = train_cell(GRIDS / "scene_backbones.yaml", data["scene"], root,
                             lambda v: v["model.name"] == "resnet50.tv_in1k" and v["optim.lr"] == 1e-3, *tiny)
    rdir = sweep.run_dir(cell)
    summary = assert_done(rdir, 3)
    assert summary["cfg.optim.lr"] == 1e-3 and summary["cfg.data.in_chans"] == 3 and summary["sweep"] == "scene_backbones"

    sweep, cell = train_cell(GRIDS / "scene_head.yaml", data["scene"], root,
                             lambda v: v["model.freeze_backbone"] and v["model.kwargs.global_pool"] == "max"
                             and v["model.drop_rate"] == 0.5, *tiny, cli=[f"model.pretrained_path={w}"])
    rdir = sweep.run_dir(cell)
    assert_done(rdir, 3)
    ck, loaded = checkpoint(rdir), load_file(w)
    trained = ck["model"]
    assert trained["fc.weight"].shape == (3, loaded["fc.weight"].shape[1])
    assert [g["param_names"] for g in ck["optimizer"]["param_groups"]] == [["fc.weight"], ["fc.bias"]]
    assert len(ck["optimizer"]["state"]) == 2  # both took steps
    backbone = [k for k in trained if not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone)
    for k in backbone:
        assert torch.equal(trained[k], loaded[k]), k
    cfg = yaml.safe_load((rdir / "config.yaml").read_text())
    assert cfg["model"]["kwargs"] == {"global_pool": "max"} and cfg["model"]["drop_rate"] == 0.5


@pytest.mark.slow
def test_scene_vit_finetune(data, root, tmp_path_factory):
    w = weights(tmp_path_factory.getbasetemp() / "test_vit.safetensors", "test_vit")
    train(CONFIGS / "scene_vit.yaml", f"data.path={data['scene']}", f"output.root={root}", "output.run=scene_vit",
          "model.name=test_vit", f"model.pretrained_path={w}", "data.img_size=32", "trainer.epochs=1", *FAST)
    rdir = root / "runs/scene_vit"
    assert_done(rdir, 3)
    ck = checkpoint(rdir)
    scales = {g["lr_scale"] for g in ck["optimizer"]["param_groups"]}
    assert len(scales) > 2 and max(scales) == 1.0  # model.layer_decay: lower blocks learn slower
    loaded = load_file(w)
    assert ck["model"]["pos_embed"].shape == loaded["pos_embed"].shape


# ====================================================================================== clip art

@pytest.mark.slow
def test_clipart_vgg19_study(data, root, tmp_path_factory, capsys):
    """The study end to end with its config: the ImageNet model on clip art (per-class top-1/top-5 and
    cross-entropy through --class-map imagenet), fc7 features, a t-SNE map, a cross-validated SVM, and the
    fine-tune (block 1 re-initialised, layer-wise learning rates, patience 3)."""
    cfg = str(CONFIGS / "clipart_vgg19.yaml")
    w = weights(tmp_path_factory.getbasetemp() / "vgg19.safetensors", "vgg19", mlp_ratio=0.01)
    tiny = [f"data.path={data['clipart']}", f"model.pretrained_path={w}", "model.kwargs.mlp_ratio=0.01",
            "data.img_size=32", "data.num_workers=0", "trainer.precision=fp32"]
    out = root / "clipart"
    assert cli("evaluate")(["--config", cfg, *tiny, "--class-map", "imagenet", "--out", str(out / "eval")]) == 0
    got = json.loads((out / "eval/metrics.json").read_text())
    assert got["class_map"] == [404, 1, 281] and got["model_outputs"] == 1000 and got["weights"] == "pretrained"
    assert got["metrics"]["samples"] == 6 and {"loss", "acc1", "acc5", "full/acc1", "full/loss"} <= set(got["metrics"])
    assert [r["name"] for r in got["per_class"]] == list(CLIP_CLASSES)
    assert all({"top1", "top5", "loss", "precision", "recall", "f1"} <= set(r) for r in got["per_class"])
    assert (out / "eval/confusion_matrix.png").is_file() and (out / "eval/predictions.parquet").is_file()

    extract = cli("extract")
    for split in ("train", "test"):
        args = ["--config", cfg, *tiny, "--layer", "pre_logits.act2", "--split", split, "--out", str(out / split)]
        assert extract(args + (["--tsne", str(out / "tsne.png")] if split == "train" else [])) == 0
    from imgtrain.studies.features import load_features
    feats = load_features(out / "train")
    assert feats.X.shape == (12, 4096) and (feats.X >= 0).all() and sorted(set(feats.y.tolist())) == [0, 1, 2]
    with Image.open(out / "tsne.png") as im:
        assert im.format == "PNG" and min(im.size) > 300
    assert cli("svm")([str(out / "train"), "--val", str(out / "test"), "--kernel", "linear", "rbf", "--C", "1",
                       "--gamma", "scale", "--cv", "2", "--out", str(out / "svm"), "--name", "clip"]) == 0
    svm = read_metrics(out / "svm")
    assert len(values(svm, "cv", "acc1")) == 4 and len(values(svm, "test", "acc1")) == 1
    capsys.readouterr()

    train(CONFIGS / "clipart_vgg19.yaml", *tiny, f"output.root={root}", "output.run=clipart_vgg19", "trainer.epochs=1",
          "data.batch_size=4")
    rdir = root / "runs/clipart_vgg19"
    assert_done(rdir, 3)
    ck, loaded = checkpoint(rdir), load_file(w)
    scale = {n: g["lr_scale"] for g in ck["optimizer"]["param_groups"] for n in g["param_names"]}
    assert scale["features.0.weight"] == 1.0 and scale["features.5.weight"] == 0.1
    assert scale["features.34.weight"] == 0.3 and scale["head.fc.weight"] == 1.0
    trained = ck["model"]

    def corr(a, b):
        return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])
    # block 1 was re-initialised (unrelated to the loaded weights); block 2 only moved a little (lr x 0.1)
    assert abs(corr(trained["features.0.weight"], loaded["features.0.weight"])) < 0.3
    assert corr(trained["features.5.weight"], loaded["features.5.weight"]) > 0.99
    saved = yaml.safe_load((rdir / "config.yaml").read_text())
    assert saved["trainer"]["patience"] == 3 and saved["model"]["reinit"] == ["features.0", "features.2"]


# ====================================================================================== CIFAR-10

@pytest.mark.slow
def test_cifar10_mlp_dropout_and_early_stopping_grids(data, root):
    """Both variants expand to their cells; a dropout-0.5 cell trains; an early-stopping cell stops on
    val/loss (here after 2 of 3 epochs: with lr 0 the loss cannot improve after the first evaluation)."""
    sweep, cell = train_cell(GRIDS / "cifar10_mlp_dropout.yaml", data["cifar10"], root,
                             lambda v: v["model.drop_rate"] == 0.5 and v["model.depth"] == 2, "trainer.epochs=1")
    assert len(sweep.cells) == 81
    summary = assert_done(sweep.run_dir(cell), 10)
    assert summary["cfg.model.drop_rate"] == 0.5

    sweep, cell = train_cell(GRIDS / "cifar10_mlp_early_stopping.yaml", data["cifar10"], root,
                             lambda v: v["optim.name"] == "sgd" and v["model.depth"] == 1,
                             "trainer.epochs=3", "trainer.patience=1", "optim.lr=0.0")
    assert len(sweep.cells) == 27 and all(c.config.trainer.patience == 5 for c in sweep.cells)
    summary = assert_done(sweep.run_dir(cell), 10)
    assert summary["monitor"] == "val/loss" and summary["epochs"] == 2 and summary["best_epoch"] == 0


@pytest.mark.slow
def test_cifar10_simple_cnn_base_and_improved(data, root):
    for name in ("base", "improved"):
        train(CONFIGS / f"cifar10_cnn_{name}.yaml", f"data.path={data['cifar10']}", f"output.root={root}",
              f"output.run=cnn_{name}", "trainer.epochs=1", *FAST)
        assert_done(root / f"runs/cnn_{name}", 10)
    base, improved = (checkpoint(root / f"runs/cnn_{n}")["model"] for n in ("base", "improved"))
    assert not any("running_mean" in k for k in base) and any("running_mean" in k for k in improved)
    assert len([k for k in base if k.startswith("features.")]) == 4  # 2 blocks x conv weight + bias
    assert base["head.weight"].shape == improved["head.weight"].shape == (10, 128)


def backbone_keys(state: dict, trainable_head: tuple[str, ...]) -> list[str]:
    return [k for k in state if not k.startswith(trainable_head)]


@pytest.mark.slow
def test_cifar10_resnet50_transfer_frozen_then_unfrozen_and_resume(data, root, tmp_path_factory):
    """Epoch 1 trains only the classifier (the backbone, BatchNorm statistics included, stays as loaded) at
    lr 1e-3; epoch 2 trains everything at 1e-5. Paused at the phase boundary and resumed, the run ends with
    the same weights and optimizer state as a straight run."""
    w = weights(tmp_path_factory.getbasetemp() / "test_resnet.safetensors", "test_resnet")
    common = [f"data.path={data['cifar10']}", f"output.root={root}", "model.name=test_resnet",
              f"model.pretrained_path={w}", "data.img_size=32", "trainer.epochs=2", "model.unfreeze_at_epoch=1",
              "sched.decay_epochs=1", *FAST]
    cfg = CONFIGS / "cifar10_resnet50_transfer.yaml"
    train(cfg, *common, "output.run=paused", "trainer.stop_after_epochs=1", code=75)
    paused = root / "runs/paused"
    after_frozen, loaded = checkpoint(paused)["model"], load_file(w)
    assert checkpoint(paused)["state"]["epoch"] == 1
    backbone = backbone_keys(after_frozen, ("fc.",))
    assert any("running_var" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    for k in backbone:
        assert torch.equal(after_frozen[k], loaded[k]), f"{k} changed while frozen"
    assert after_frozen["fc.weight"].shape == (10, loaded["fc.weight"].shape[1])

    train(cfg, *common, "output.run=paused")  # resumes in the unfrozen phase
    assert_done(paused, 10)
    final = checkpoint(paused)
    changed = [k for k in backbone if not torch.equal(final["model"][k], after_frozen[k])]
    assert "conv1.0.weight" in changed and any("running_mean" in k for k in changed)
    lr = rows(read_metrics(paused), "train", "lr")
    lr = dict(zip(lr["epoch"].to_pylist(), lr["value"].to_pylist()))  # the last step's lr of each epoch
    assert lr[0] == pytest.approx(1e-3) and lr[1] == pytest.approx(1e-5)

    train(cfg, *common, "output.run=straight")
    straight = checkpoint(root / "runs/straight")
    for k, v in straight["model"].items():
        assert torch.equal(v, final["model"][k]), k
    a, b = straight["optimizer"]["state"], final["optimizer"]["state"]
    assert a.keys() == b.keys() and len(a) == len(list(final["model"])) - sum("num_batches" in k or "running" in k
                                                                               for k in final["model"])
    for i in a:
        for k in a[i]:
            assert torch.equal(a[i][k], b[i][k]), (i, k)


@pytest.mark.slow
def test_cifar10_vgg16_transfer_frozen_then_unfrozen(data, root, tmp_path_factory):
    """While the convolutional base is frozen, VGG's fc6/fc7 (unfreeze_last: 1) learn with the classifier.
    The tiny stand-in is VGG-11 (same layout and names, half the compute) with a 40-wide fc6."""
    w = weights(tmp_path_factory.getbasetemp() / "vgg11.safetensors", "vgg11", mlp_ratio=0.01)
    common = [f"data.path={data['cifar10']}", f"output.root={root}", "output.run=vgg16", f"model.pretrained_path={w}",
              "model.name=vgg11",
              "model.kwargs.mlp_ratio=0.01", "data.img_size=32", "trainer.epochs=2", "model.unfreeze_at_epoch=1",
              "sched.decay_epochs=1", *FAST]
    cfg = CONFIGS / "cifar10_vgg16_transfer.yaml"
    train(cfg, *common, "trainer.stop_after_epochs=1", code=75)
    rdir = root / "runs/vgg16"
    after_frozen, loaded = checkpoint(rdir)["model"], load_file(w)
    for k in backbone_keys(after_frozen, ("pre_logits.", "head.")):
        assert torch.equal(after_frozen[k], loaded[k]), f"{k} changed while frozen"
    assert not torch.equal(after_frozen["pre_logits.fc2.weight"], loaded["pre_logits.fc2.weight"])
    train(cfg, *common)
    assert_done(rdir, 10)
    assert not torch.equal(checkpoint(rdir)["model"]["features.0.weight"], loaded["features.0.weight"])


DDP_SCRIPT = '''
import copy, json, sys
import torch, torch.distributed as tdist
from imgtrain import config as C
from imgtrain.engine import dist, trainer as T
cfg = C.load(sys.argv[1], sys.argv[3:])
env = dist.init(cfg)
trained = {}
test = T.Trainer.test
def keep_then_test(self):  # the weights training ended with (the test loads best.pt, from the frozen epoch here)
    trained["model"] = copy.deepcopy(self.model)
    return test(self)
T.Trainer.test = keep_then_test
assert T.run(cfg, env).exit_code == 0
vec = torch.cat([p.detach().flatten() for p in trained["model"].parameters()])
every = [torch.zeros_like(vec) for _ in range(env.world)]
tdist.all_gather(every, vec)
if env.rank == 0:
    json.dump({"ranks_equal": all(torch.equal(every[0], v) for v in every),
               "conv1": float(trained["model"].state_dict()["conv1.0.weight"].sum())}, open(sys.argv[2], "w"))
dist.close(env)
'''


@pytest.mark.multiproc
@pytest.mark.slow
def test_cifar10_transfer_unfreezes_under_ddp(data, root, tmp_path, tmp_path_factory):
    """Under DDP (2 processes, gloo) the backbone's gradients are averaged once it unfreezes: DDP only syncs
    the parameters that needed gradients when it was built, so the trainer builds it again at the phase
    change; without that the ranks' backbones drift apart."""
    w = weights(tmp_path_factory.getbasetemp() / "test_resnet.safetensors", "test_resnet")
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    run_cmd([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", tmp_path / "ddp.py",
             CONFIGS / "cifar10_resnet50_transfer.yaml", tmp_path / "out.json", f"data.path={data['cifar10']}",
             f"output.root={root}", "output.run=ddp", "model.name=test_resnet", f"model.pretrained_path={w}",
             "data.img_size=32", "trainer.epochs=2", "model.unfreeze_at_epoch=1", "sched.decay_rate=1.0",
             "sched.decay_epochs=1", *FAST, "data.batch_size=4"])
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["ranks_equal"]
    assert got["conv1"] != pytest.approx(float(load_file(w)["conv1.0.weight"].sum()), abs=1e-6)  # it did train
    assert (root / "runs/ddp/DONE").is_file()
