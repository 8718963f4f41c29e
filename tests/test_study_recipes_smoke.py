"""Every study recipe (jobs/configs/sNNN_*.yaml, jobs/grids/sNNN_*.yaml) trains on tiny data in its study's
source format, packed with the pack command its header gives (issue 17).

Each runs as shipped plus tiny-size overrides only: a tiny timm model of the same family (timm's test_*
models, a 16 px ViT, a small ConvMixer, VGG with narrow fc layers), one short epoch, fp32, no loader
workers; fine-tune recipes load a temporary .safetensors of a randomly initialised model through
model.pretrained_path. What the study states stays as the recipe has it (optimiser, lr, heads, splits,
class maps, selection on test); tests/test_study_recipes.py checks those settings.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT, pack_in_process
from imgtrain import config as C
from imgtrain.engine import trainer as T
from imgtrain.engine.cli import main as train_main
from imgtrain.logs import read_metrics
from imgtrain.sweep.spec import load_spec
from sourcedata import (image_bytes, photos, write_ava, write_cifar10, write_cifar100, write_imagefolder,
                        write_tinyimagenet)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # every test trains a model

CONFIGS, GRIDS = ROOT / "jobs/configs", ROOT / "jobs/grids"
FAST = ["trainer.epochs=1", "data.batch_size=8", "data.num_workers=0", "trainer.precision=fp32",
        "trainer.log_every_seconds=0", "trainer.log_every_steps=1"]
CLIP_CLASSES = ("airliner", "goldfish", "tabby")  # ImageNet-1k 404, 1, 281
TINY_VIT = ["model.name=test_vit", "data.img_size=32"]
TINY_RESNET = ["model.name=test_resnet", "data.img_size=32"]
TINY_CONVMIXER = ["model.name=convmixer", "model.dim=16", "model.depth=2", "model.kernel_size=3",
                  "model.patch_size=4", "data.img_size=16"]
TINY_CONVMIXER_FIELDS = {"dim": 16, "depth": 2, "kernel_size": 3, "patch_size": 4}
TINY_VGG = ["model.kwargs.mlp_ratio=0.01", "data.img_size=32"]  # fc6/fc7 of 40 units instead of 4,096
TINY_MOBILEVIT = ["model.name=mobilevit_xxs", "data.img_size=32"]

# recipe -> (data set, tiny overrides, weights: None or (model name, its ModelConfig fields))
RECIPES = {
    "s000_cifar10_vit": ("cifar10_v10", ["model.img_size=16", "model.patch_size=8", "data.img_size=16",
                                         "model.kwargs={embed_dim: 16, depth: 1, num_heads: 2, mlp_ratio: 2.0, "
                                         "class_token: false, global_pool: ''}", "model.head_hidden=[16,8]"], None),
    "s000_cifar10_convmixer": ("cifar10_v10", TINY_CONVMIXER, None),
    "s000_cifar100_vit_finetune": ("cifar100", TINY_VIT, ("test_vit", {})),
    "s000_cifar100_convmixer_finetune": ("cifar100", TINY_CONVMIXER, ("convmixer", TINY_CONVMIXER_FIELDS)),
    "s000_ava_vit": ("ava", TINY_VIT, ("test_vit", {})),
    "s000_ava_convmixer": ("ava", TINY_CONVMIXER, ("convmixer", TINY_CONVMIXER_FIELDS)),
    "s001_scene_inceptionresnetv2_10": ("scene_fixed", TINY_RESNET, ("test_resnet", {})),
    "s001_scene_inceptionresnetv2_18": ("scene_fixed", TINY_RESNET, ("test_resnet", {})),
    "s001_scene_vit": ("scene_fixed", TINY_VIT, ("test_vit", {})),
    "s002_vgg19_optimal": ("clipart", TINY_VGG, ("vgg19", {"kwargs": {"mlp_ratio": 0.01}})),
    "s002_retrain_a": ("clipart", TINY_VGG, ("vgg19", {"kwargs": {"mlp_ratio": 0.01}})),
    "s002_retrain_b": ("clipart", TINY_VGG, ("vgg19_bn", {"kwargs": {"mlp_ratio": 0.01}})),
    "s002_retrain_c": ("clipart", TINY_VGG, ("vgg19", {"kwargs": {"mlp_ratio": 0.01}})),
    "s002_retrain_d": ("clipart", TINY_VGG, ("vgg19", {"kwargs": {"mlp_ratio": 0.01}})),
    "s002_retrain_e": ("clipart", TINY_VGG, ("vgg19", {"kwargs": {"mlp_ratio": 0.01}})),
    "s003_tinyimagenet": ("tinyimagenet_8020", TINY_MOBILEVIT, ("mobilevit_xxs", {})),
    "s003_text_notext": ("text_notext", TINY_MOBILEVIT, ("mobilevit_xxs", {})),
    "s003_text_notext_balanced": ("text_notext", TINY_MOBILEVIT, ("mobilevit_xxs", {})),
    "s003_text_notext_imagenet_norm": ("text_notext", TINY_MOBILEVIT, ("mobilevit_xxs", {})),
    "s004_mlp": ("cifar10_test_as_val", [], None),
    "s004_cnn_base": ("cifar10_test_as_val", [], None),
    "s004_cnn_improved": ("cifar10_test_as_val", [], None),
    "s004_resnet50_base": ("cifar10_test_as_val", TINY_RESNET, ("test_resnet", {})),
    "s004_resnet50_improved": ("cifar10_test_as_val", TINY_RESNET, ("test_resnet", {})),
    "s004_vgg16_base": ("cifar10_test_as_val", ["model.name=vgg11", "data.img_size=32"], ("vgg11", {})),
    "s004_vgg16_improved": ("cifar10_test_as_val", ["model.name=vgg11", "data.img_size=32"], ("vgg11", {})),
}
EVALUATION_ONLY = {"s002_vgg19_as_is"}  # run by jobs/evaluate.py (tests/test_recipes_scene_clipart_cifar.py)


def pack(kind, src, out, *options) -> Path:
    return pack_in_process(kind, src, out, "--shard-size", "32", *options)


def grey_folder(root: Path, classes, n: int) -> list[str]:
    imgs = iter(photos(len(classes) * n, size=(40, 48), seed=7))
    names = []
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            from PIL import Image
            import numpy as np
            (root / c / f"img_{i:03d}.jpg").write_bytes(
                image_bytes(np.asarray(Image.fromarray(next(imgs)).convert("L")), "jpg"))
            names.append(f"{c}/img_{i:03d}.jpg")
    return names


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("study_data")

    def make(name):
        src = base / "src" / name
        if name == "cifar10_test_as_val":  # S004: 50,000 / 10,000, no val carved
            return pack("cifar10", write_cifar10(src, n_per_batch=8, n_test=10), base / name, "--val-fraction", "0")
        if name == "cifar10_v10":
            return pack("cifar10", write_cifar10(src, n_per_batch=8, n_test=10), base / name, "--val-fraction", "0.1")
        if name == "cifar100":
            write_cifar100(src, n_train=60, n_test=20, n_fine=6)
            return pack("cifar100", src / "cifar-100-python", base / name, "--val-fraction", "0.1")
        if name == "ava":
            return pack("ava", write_ava(src, n=40).root, base / name, "--test-fraction", "0.1")
        if name == "scene_fixed":  # S001's fixed lists: the first 6 of each class train, the last 2 validate
            files = grey_folder(src, ("bedroom", "coast", "forest"), 8)
            (base / "train.txt").write_text("\n".join(f for f in files if int(f[-7:-4]) < 6) + "\n")
            (base / "val.txt").write_text("\n".join(f for f in files if int(f[-7:-4]) >= 6) + "\n")
            return pack("imagefolder", src, base / name, "--split-list", f"train={base / 'train.txt'}",
                        "--split-list", f"val={base / 'val.txt'}")
        if name == "clipart":
            write_imagefolder(src, classes=CLIP_CLASSES, n_per_class=12, seed=8)
            return pack("imagefolder", src, base / name, "--val-fraction", "0.25", "--test-fraction", "0.25")
        if name == "tinyimagenet_8020":
            return pack("tinyimagenet", write_tinyimagenet(src, n_classes=3, n_train=6, n_val=2), base / name,
                        "--official-val", "none", "--val-fraction", "0.2")
        if name == "text_notext":
            write_imagefolder(src, classes=("no_text", "text"), n_per_class=10, seed=9)
            return pack("imagefolder", src, base / name, "--val-fraction", "0.2", "--test-fraction", "0")
        raise KeyError(name)

    return functools.cache(make)  # each data set packed on first use


def weights(tmp: Path, name: str, fields: dict) -> Path:
    """A randomly initialised 1000-way ImageNet-shaped model as .safetensors (downloaded weights' stand-in)."""
    import hashlib
    from safetensors.torch import save_file
    from imgtrain.models import create_model
    tag = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    path = tmp / f"{name}-{tag}.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        model = create_model(C.ModelConfig(name=name, **fields), num_classes=1000, in_chans=3, img_size=32)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_every_study_recipe_has_a_smoke_run():
    configs = {p.stem for p in CONFIGS.glob("s00[0-4]_*.yaml")}
    assert configs == set(RECIPES) | EVALUATION_ONLY


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_study_recipe_trains(recipe, data, tmp_path_factory, tmp_path):
    kind, tiny, w = RECIPES[recipe]
    overrides = [f"data.path={data(kind)}", f"output.root={tmp_path}", f"output.run={recipe}", *FAST, *tiny]
    if w is not None:
        overrides.append(f"model.pretrained_path={weights(tmp_path_factory.getbasetemp(), *w)}")
    assert train_main(["--config", str(CONFIGS / f"{recipe}.yaml"), *overrides]) == 0
    rdir = tmp_path / "runs" / recipe
    assert (rdir / "DONE").is_file()
    rows = read_metrics(rdir).to_pylist()
    logged = {(r["split"], r["metric"]) for r in rows}
    cfg = C.load(rdir / "config.yaml")
    assert ("train", "loss") in logged and ("val", "loss") in logged
    if cfg.task.name == "classification":
        assert ("train", "acc1") in logged and ("val", "acc1") in logged  # Keras's accuracy and val_accuracy
    if cfg.data.test_split is None:
        assert not (rdir / "test_results.json").exists()  # the study had no test set
    if cfg.data.select_on_test:  # S004: val_* is the test set, and the run says so
        run = json.loads((rdir / "run.json").read_text())
        assert any("select_on_test" in w for w in run.get("warnings", []))
        val_n = [r["value"] for r in rows if (r["split"], r["metric"]) == ("val", "samples")]
        test_n = [r["value"] for r in rows if (r["split"], r["metric"]) == ("test", "samples")]
        assert val_n and test_n and val_n[-1] == test_n[-1] == 10
    if cfg.task.class_map == "imagenet":  # S002: the 1000-way ImageNet output is trained and scored
        results = json.loads((rdir / "test_results.json").read_text())
        assert len(results["class_names"]) == 1000 and results["class_names"][404] == "airliner"
        ck = torch.load(rdir / "checkpoints/last.pt", map_location="cpu", weights_only=True)
        assert ck["model"]["head.fc.weight"].shape[0] == 1000
        # evaluated afterwards (jobs/evaluate.py RUN_DIR, as the recipe's header says): scored 1000-way through
        # the run's own class map, on another set named as ImageNet classes
        import importlib.util
        spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "jobs/evaluate.py")
        cli = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cli)
        assert cli.main([str(rdir), "data.num_workers=0", "--out", str(tmp_path / "eval")]) == 0
        got = json.loads((tmp_path / "eval/metrics.json").read_text())
        assert got["class_map"] == [404, 1, 281] and got["model_outputs"] == 1000
    if cfg.model.head_hidden:  # S001 / S000 dense heads
        ck = torch.load(rdir / "checkpoints/last.pt", map_location="cpu", weights_only=True)
        hidden = [k for k in ck["model"] if k.startswith("dense_head.") and k.endswith(".weight")]
        assert len(hidden) == len(cfg.model.head_hidden) + 1


@pytest.mark.parametrize("grid, pick", [
    ("s004_mlp", lambda v: v["optim.name"] == "rmsprop" and v["model.depth"] == 3),
    ("s004_mlp_dropout", lambda v: v["optim.name"] == "sgd"),
    ("s004_mlp_early_stopping", lambda v: v["optim.name"] == "adam"),
])
def test_study_grid_cell_trains(grid, pick, data, tmp_path):
    sweep = load_spec(GRIDS / f"{grid}.yaml", [f"data.path={data('cifar10_test_as_val')}"], root=str(tmp_path))
    cell = next(c for c in sweep.cells if pick(c.values))
    result = T.train(C.load(sweep.config_path, list(cell.overrides) + FAST + [f"output.root={tmp_path}"]))
    assert result.exit_code == 0 and (result.run_dir / "DONE").is_file()
    ck = torch.load(result.run_dir / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    group = ck["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(cell.config.optim.lr)
    if cell.config.optim.name == "rmsprop":
        assert group["alpha"] == 0.9 and group["momentum"] == 0.0
    if cell.config.optim.name == "sgd":
        assert group["momentum"] == 0.0 and not group["nesterov"]


def test_s002_vgg19_as_is_evaluated_beside_the_study(tmp_path_factory, tmp_path):
    """S002 Table 4.1: the ImageNet VGG-19 evaluated, not trained (jobs/evaluate.py with the recipe, --out
    ROOT/evaluations/NAME as its header says); `--study S002` reads the 1000-way top-1/top-5 from it."""
    import importlib.util
    src = tmp_path / "src"
    write_imagefolder(src, classes=CLIP_CLASSES, n_per_class=5, seed=10)
    shards = pack("imagefolder", src, tmp_path / "data/shards/clipart-curated", "--val-fraction", "0",
                  "--test-fraction", "0.2")
    w = weights(tmp_path_factory.getbasetemp(), "vgg19", {"kwargs": {"mlp_ratio": 0.01}})
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "jobs/evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    root = tmp_path / "root"
    assert cli.main(["--config", str(CONFIGS / "s002_vgg19_as_is.yaml"), f"data.path={shards}",
                     f"model.pretrained_path={w}", *TINY_VGG, "data.num_workers=0",
                     "--out", str(root / "evaluations/as_is_curated")]) == 0
    got = json.loads((root / "evaluations/as_is_curated/metrics.json").read_text())
    assert got["class_map"] == [404, 1, 281] and got["model_outputs"] == 1000
    from imgtrain.studies import reference as studies
    cmp = studies.compare(studies.load_study("S002"), root)
    rows = {(r["experiment"], r["metric"]): r for r in cmp.rows}
    top1 = rows[("vgg19_as_is_curated", "acc1")]
    assert top1["run_id"] == "evaluations/as_is_curated" and top1["status"] == "EVALUATED"
    assert top1["ours"] == pytest.approx(got["metrics"]["full/acc1"]) and top1["source"] == "evaluation full/acc1"
    assert rows[("vgg19_as_is_noisy23", "acc1")]["ours"] is None  # another data set: no evaluation of it yet
    assert "vgg19_as_is_curated" not in {x.id for x in cmp.no_run}
