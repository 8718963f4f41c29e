"""Every study recipe states what its document states (issue 17).

For each recipe in jobs/configs/sNNN_*.yaml and jobs/grids/sNNN_*.yaml, the resolved config (every
default filled in, `extends` followed, each grid cell built) is checked against the settings the study's
document states (../shared/studies/README.md digests them). A setting the study leaves unstated is ours
and is not checked here; the recipe's comments say so. Fast: configs are only loaded, nothing trains.
"""
from __future__ import annotations

import pytest

from conftest import ROOT
from imgtrain import config as C
from imgtrain.sweep.spec import load_spec

CONFIGS, GRIDS = ROOT / "jobs/configs", ROOT / "jobs/grids"
REQUIRED_PATHS = ["data.path=/data/x", "model.pretrained_path=/weights/x.safetensors"]

# Keras's optimiser defaults (S004 states them; S000/S001 used Keras)
KERAS_SGD = {"optim.name": "sgd", "optim.lr": 0.01, "optim.momentum": 0.0, "optim.nesterov": False}
KERAS_ADAM = {"optim.name": "adam", "optim.lr": 0.001}
KERAS_RMSPROP = {"optim.name": "rmsprop", "optim.lr": 0.001, "optim.alpha": 0.9, "optim.momentum": 0.0}
CONSTANT_LR = {"sched.name": "none"}
S004_DATA = {"data.val_split": "test", "data.test_split": "test", "data.select_on_test": True,
             "data.mean": [0.0, 0.0, 0.0], "data.std": [1.0, 1.0, 1.0], "data.img_size": 32}
NO_AUGMENTATION = {"data.scale": [1.0, 1.0], "data.ratio": [1.0, 1.0], "data.hflip": 0.0,
                   "data.simple_augment": False, "data.auto_augment": None}

STATED: dict[str, dict] = {
    # S000: aesthetics with ViT and ConvMixer
    "s000_cifar10_vit": {"optim.lr": 0.001, "data.batch_size": 256, "trainer.epochs": 20, "data.rotate": 7.2},
    "s000_cifar10_convmixer": {"optim.lr": 0.001, "data.batch_size": 128, "trainer.epochs": 10},
    "s000_cifar100_vit_finetune": {"model.name": "vit_base_patch32_224", "optim.lr": 1e-5, "data.batch_size": 256,
                                   "trainer.epochs": 30, "trainer.patience": None, "model.freeze_backbone": False},
    "s000_cifar100_convmixer_finetune": {"optim.lr": 1e-5, "data.batch_size": 32, "trainer.epochs": 20,
                                         "trainer.patience": None},
    "s000_ava_vit": {"model.name": "vit_base_patch32_224", "data.batch_size": 64, "optim.lr": 1e-6,
                     "trainer.epochs": 30, "trainer.patience": None, "task.name": "score_distribution",
                     "task.loss": "mse"},
    "s000_ava_convmixer": {"data.batch_size": 16, "trainer.epochs": 20, "trainer.patience": None,
                           "task.name": "score_distribution", "task.loss": "mse"},
    # S001: 15-Scene
    "s001_scene_inceptionresnetv2_10": {"model.name": "inception_resnet_v2.tf_in1k", "optim.name": "adam",
                                        "optim.lr": 1e-4, "trainer.epochs": 70, "trainer.patience": 15,
                                        "trainer.monitor": "val/loss", "model.head_dropout": 0.1,
                                        "data.test_split": None},
    "s001_scene_inceptionresnetv2_18": {"model.name": "inception_resnet_v2.tf_in1k", "optim.name": "adam",
                                        "optim.lr": 1e-5, "trainer.epochs": 70, "trainer.patience": 15,
                                        "trainer.monitor": "val/loss", "model.head_dropout": 0.1,
                                        "data.test_split": None},
    "s001_scene_vit": {"data.test_split": None},
    # S002: VGG-19 on clip art (1000-way ImageNet output kept)
    "s002_vgg19_as_is": {"model.num_classes": 1000, "task.class_map": "imagenet", "data.img_size": 224},
    "s002_vgg19_optimal": {"model.num_classes": 1000, "task.class_map": "imagenet", "data.img_size": 224,
                           "data.batch_size": 8, "optim.name": "sgd", "optim.lr": 1e-2, "optim.momentum": 0.9,
                           "model.reinit_init": "uniform", "sched.name": "plateau", "trainer.patience": 3},
    "s002_retrain_a": {"data.batch_size": 8, "optim.momentum": 0.9, "optim.lr": 1e-3, "sched.decay_rate": 0.5,
                       "model.num_classes": 1000, "model.reinit": []},
    "s002_retrain_b": {"model.name": "vgg19_bn.tv_in1k", "data.batch_size": 8, "optim.lr": 1e-3},
    "s002_retrain_c": {"data.batch_size": 8, "optim.lr": 1e-3},
    "s002_retrain_d": {"model.reinit_init": "uniform", "optim.lr": 1e-2},
    "s002_retrain_e": {"model.reinit": ["head"], "model.reinit_init": "uniform", "optim.lr": 1e-2},
    # S003: MobileViT transfer
    "s003_tinyimagenet": {"model.name": "mobilevit_s", "optim.name": "adam", "optim.lr": 1e-4,
                          "data.img_size": 224, "trainer.epochs": 10, "data.test_split": None,
                          "model.freeze_backbone": False},
    "s003_text_notext": {"model.name": "mobilevit_s", "optim.name": "adam", "optim.lr": 1e-3,
                         "data.img_size": 224, "data.batch_size": 32, "trainer.epochs": 10,
                         "data.mean": [0.5] * 3, "data.std": [0.5] * 3, "data.test_split": None},
    "s003_text_notext_balanced": {"task.class_weights": "balanced", "trainer.epochs": 10, "data.rotate": 15.0},
    "s003_text_notext_imagenet_norm": {"data.mean": [0.485, 0.456, 0.406], "data.std": [0.229, 0.224, 0.225],
                                       "trainer.epochs": 10},
    # S004: CIFAR-10 grid study
    "s004_mlp": {**S004_DATA, **NO_AUGMENTATION, **KERAS_SGD, **CONSTANT_LR, "trainer.epochs": 50,
                 "model.name": "mlp", "model.drop_rate": 0.0},
    "s004_cnn_base": {**S004_DATA, **NO_AUGMENTATION, **KERAS_ADAM, **CONSTANT_LR, "trainer.epochs": 25,
                      "model.name": "keras_cnn_base"},
    "s004_cnn_improved": {**S004_DATA, "optim.name": "adam", "optim.lr": 1e-4, "trainer.epochs": 50,
                          "model.name": "keras_cnn_improved", "data.hflip": 0.5, "data.simple_augment": True},
    "s004_resnet50_base": {"data.val_split": "test", "data.select_on_test": True, **KERAS_ADAM,
                           "model.name": "resnet50", "trainer.epochs": 10},
    "s004_resnet50_improved": {"data.val_split": "test", "optim.name": "adam", "trainer.epochs": 50,
                               "model.drop_rate": 0.5},
    "s004_vgg16_base": {"data.val_split": "test", **KERAS_ADAM, "model.name": "vgg16",
                        "model.freeze_backbone": True, "model.head_pool": "flatten", "trainer.epochs": 20},
    "s004_vgg16_improved": {"data.val_split": "test", "optim.name": "adam", "optim.lr": 1e-5,
                            "model.freeze_backbone": True, "trainer.epochs": 50, "trainer.precision": "fp16"},
}

S004_OPTIMISERS = {"sgd": KERAS_SGD, "adam": KERAS_ADAM, "rmsprop": KERAS_RMSPROP}
S004_REGULARISED = {("sgd", "relu", 3), ("sgd", "tanh", 3), ("sgd", "sigmoid", 1), ("adam", "relu", 3),
                    ("adam", "tanh", 1), ("adam", "sigmoid", 1), ("rmsprop", "relu", 3), ("rmsprop", "tanh", 3),
                    ("rmsprop", "sigmoid", 1)}


def value(cfg: C.Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def assert_stated(cfg: C.Config, stated: dict, where: str) -> None:
    wrong = {k: (value(cfg, k), v) for k, v in stated.items()
             if not (value(cfg, k) == pytest.approx(v) if isinstance(v, float) else value(cfg, k) == v)}
    assert not wrong, f"{where}: settings that differ from the study (ours, stated): {wrong}"


def test_every_study_config_is_checked():
    configs = {p.stem for p in CONFIGS.glob("s00[0-4]_*.yaml")}
    assert configs == set(STATED), f"unchecked: {configs - set(STATED)}, missing: {set(STATED) - configs}"


@pytest.mark.parametrize("name", sorted(STATED))
def test_study_config_states_what_the_document_states(name):
    cfg = C.load(CONFIGS / f"{name}.yaml", REQUIRED_PATHS)
    assert cfg.name == name
    assert_stated(cfg, STATED[name], name)


def test_s004_mlp_grid_is_the_studys_27_runs_at_keras_defaults():
    sweep = load_spec(GRIDS / "s004_mlp.yaml", ["data.path=/data/cifar10"])
    cells = {(c.config.optim.name, c.config.model.activation, c.config.model.depth): c for c in sweep.cells}
    assert len(sweep.cells) == 27 and len(cells) == 27
    for (opt, act, depth), cell in cells.items():
        assert_stated(cell.config, {**S004_DATA, **NO_AUGMENTATION, **S004_OPTIMISERS[opt], **CONSTANT_LR,
                                    "trainer.epochs": 50, "model.drop_rate": 0.0}, f"s004_mlp {opt} {act} {depth}")


@pytest.mark.parametrize("grid, stated", [
    ("s004_mlp_dropout", {"trainer.epochs": 50, "trainer.patience": None}),
    ("s004_mlp_early_stopping", {"trainer.epochs": 50, "model.drop_rate": 0.0}),
])
def test_s004_regularisation_grids_are_the_studys_9_runs(grid, stated):
    sweep = load_spec(GRIDS / f"{grid}.yaml", ["data.path=/data/cifar10"])
    cells = {(c.config.optim.name, c.config.model.activation, c.config.model.depth): c for c in sweep.cells}
    assert set(cells) == S004_REGULARISED
    for (opt, act, depth), cell in cells.items():
        assert_stated(cell.config, {**S004_DATA, **S004_OPTIMISERS[opt], **CONSTANT_LR, **stated},
                      f"{grid} {opt} {act} {depth}")
    if grid == "s004_mlp_dropout":
        assert all(c.config.model.drop_rate > 0 for c in sweep.cells)
    else:
        assert all(c.config.trainer.patience is not None for c in sweep.cells)


def test_s001_applications_grid_keeps_the_selected_models_settings():
    sweep = load_spec(GRIDS / "s001_scene_applications.yaml", REQUIRED_PATHS[:1])
    names = {c.config.model.name.split(".")[0] for c in sweep.cells}
    assert len(names) == 12 and "inception_resnet_v2" in names  # the 13 Keras applications less NASNetMobile
    assert {c.config.optim.lr for c in sweep.cells} == {1e-4, 1e-5}
    for cell in sweep.cells:
        assert_stated(cell.config, {"optim.name": "adam", "trainer.epochs": 70, "trainer.patience": 15,
                                    "trainer.monitor": "val/loss", "model.head_dropout": 0.1}, cell.run_id)


def test_study_recipes_name_their_unstated_choices():
    """Each study recipe says, in its comments, what the document leaves unstated (or that it states all)."""
    for path in sorted(CONFIGS.glob("s00[0-4]_*.yaml")) + sorted(GRIDS.glob("s00[0-4]_*.yaml")):
        text = path.read_text()
        assert "not stated" in text.lower(), f"{path.name}: no word on what the study leaves unstated"
        assert text.startswith(f"# S00{path.name[3]} "), f"{path.name}: the first line names the study"


def test_s002_optimal_model_reinitialises_conv1_to_conv10_and_fc6_to_fc8_at_their_rates():
    """5.2.2: conv1-conv10 and fc6-fc8 re-initialised and at lr 1e-2, conv11-conv16 at 1e-4 (names on timm's
    vgg19, built on the meta device: no weights, no memory)."""
    import fnmatch

    import timm
    import torch
    cfg = C.load(CONFIGS / "s002_vgg19_optimal.yaml", REQUIRED_PATHS)
    with torch.device("meta"):
        vgg = timm.create_model("vgg19", num_classes=1000)
    layers = [n for n, m in vgg.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
              or type(m).__name__ == "ConvMlp"]
    convs = [n for n in layers if n.startswith("features.")]
    reinit = [n for n in layers if any(fnmatch.fnmatchcase(n, p) or n.startswith(p + ".") for p in cfg.model.reinit)]
    assert [n for n in reinit if n in convs] == convs[:10]
    assert {"pre_logits.fc1", "pre_logits.fc2", "head.fc"} <= set(reinit)

    def rate(name):
        scale = next((v for p, v in cfg.model.lr_groups.items() if fnmatch.fnmatchcase(name + ".weight", p)), 1.0)
        return cfg.optim.lr * scale
    assert [rate(n) for n in convs] == pytest.approx([1e-2] * 10 + [1e-4] * 6)
    assert rate("head.fc") == pytest.approx(1e-2) and rate("pre_logits.fc1") == pytest.approx(1e-2)

