"""Models: every requested family builds, trains a step and round-trips its weights; local weights;
transfer learning (freeze, unfreeze, reinit) and optimizer parameter groups."""
import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from imgtrain.config import ConfigError, ModelConfig, OptimConfig
from imgtrain.models import (WeightsMismatchError, apply_transfer, block_groups, create_model, data_config,
                             list_models, load_pretrained, param_groups)


def build(name, num_classes=3, size=32, in_chans=3, seed=0, **kw):
    """`size` is the data's image size; keyword arguments are ModelConfig fields."""
    torch.manual_seed(seed)
    return create_model(ModelConfig(name=name, **kw), num_classes, in_chans=in_chans, img_size=size)


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------- one test per family

def family(name, kw, size=32, slow=False):
    return pytest.param(name, kw, size, id=name + (f"-{kw['variant']}" if "variant" in kw else ""),
                        marks=[pytest.mark.slow] if slow else [])


FAMILIES = [
    family("vit_tiny_patch16_224", dict(img_size=32, patch_size=4)),
    family("convmixer", dict(dim=32, depth=2)),
    family("vgg16", dict(kwargs={"mlp_ratio": 1 / 64})),  # the real vgg16 conv tower, small pre-logits MLP
    family("resnet18", {}),
    family("mobilevit_xxs", {}),
    family("densenet121", {}),
    family("inception_v3", {}, size=75, slow=True),  # its stem needs >= 75 px
    family("mobilenetv2_100", {}),
    family("xception41", {}, slow=True),
    family("mlp", dict(depth=2, activation="tanh")),
    family("simple_cnn", dict(variant="base")),
    family("simple_cnn", dict(variant="improved")),
]


@pytest.mark.parametrize("name,kw,size", FAMILIES)
def test_family_trains_and_round_trips(name, kw, size, tmp_path):
    model = build(name, num_classes=3, size=size, **kw)
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    model.train()
    out = model(x)
    assert out.shape == (2, 3)
    F.cross_entropy(out, torch.tensor([0, 2])).backward()
    head_w = model.get_classifier().weight
    assert head_w.grad is not None and head_w.grad.abs().sum() > 0
    before = head_w.detach().clone()
    # batch 2 at 32 px leaves 1x1 maps in deep BN nets: their gradients explode without clipping
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert not torch.equal(before, head_w.detach())

    ref = outputs(model, x)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    fresh = build(name, num_classes=3, size=size, seed=123, **kw)
    assert not torch.equal(outputs(fresh, x), ref)
    fresh.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True))
    torch.testing.assert_close(outputs(fresh, x), ref, rtol=0, atol=0)


@pytest.mark.slow
def test_full_size_vgg16_runs_on_small_input():
    model = build("vgg16", num_classes=10)
    assert model.pre_logits.fc1.out_channels == 4096  # the standard 4096-wide classifier MLP
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.features) == 13
    assert outputs(model, torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_requested_timm_names_exist():
    for name in ["vit_tiny_patch16_224", "convmixer_768_32", "vgg16", "vgg19", "vgg16_bn", "vgg19_bn",
                 "resnet18", "resnet50", "mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "densenet121",
                 "densenet169", "densenet201", "inception_resnet_v2", "inception_v3", "mobilenetv2_100",
                 "legacy_xception", "xception41", "xception65", "xception71", "efficientnet_b0"]:
        assert list_models(name) == [name]


def test_list_models_has_ours_and_timm():
    assert list_models("simple*") == ["simple_cnn"]
    assert list_models("*", include_timm=False) == ["airbench", "convmixer", "mlp", "simple_cnn"]
    names = list_models("convmixer*")
    assert names[0] == "convmixer" and "convmixer_768_32" in names


# --------------------------------------------------------------------------- create_model arguments

def test_img_size_reaches_vit_but_not_cnns():
    vit = build("vit_tiny_patch16_224", num_classes=10, size=32, patch_size=8)
    assert tuple(vit.patch_embed.img_size) == (32, 32) and vit.patch_embed.num_patches == 16
    # models that reject img_size still build when only the data size is known
    assert build("convmixer_768_32", size=32).num_classes == 3
    assert build("resnet18", size=32).num_classes == 3
    # but an explicit model.img_size that the model rejects is an error
    with pytest.raises(ConfigError, match="img_size"):
        create_model(ModelConfig(name="resnet18", img_size=64), 3)


def test_drop_rates_and_kwargs_reach_timm():
    m = build("vit_tiny_patch16_224", size=32, patch_size=16, drop_rate=0.3, drop_path_rate=0.1,
              kwargs={"depth": 2})
    assert len(m.blocks) == 2 and m.head_drop.p == 0.3
    assert m.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ConfigError, match="resnet50") as e:
        create_model(ModelConfig(name="resnet_50"), 10)
    assert "unknown model 'resnet_50'" in str(e.value)
    with pytest.raises(ConfigError, match="simple_cnn"):
        create_model(ModelConfig(name="simple_cn"), 10)


@pytest.mark.parametrize("cfg,match", [
    (ModelConfig(name="resnet18", depth=3), "model.depth is for the local models"),
    (ModelConfig(name="resnet18", kwargs={"pretrained": True}), "pretrained_path"),
    (ModelConfig(name="hf-hub:timm/resnet18.a1_in1k"), "nothing is downloaded"),
    (ModelConfig(name="mlp", dim=4), "model.dim does not apply to local model 'mlp'"),
    (ModelConfig(name="mlp", depth=4), "1..3"),
    (ModelConfig(name="mlp", activation="swish"), "relu, tanh, sigmoid"),
    (ModelConfig(name="simple_cnn", variant="large"), "base, improved"),
    (ModelConfig(name="vgg11", drop_path_rate=0.1), "drop_path_rate"),
])
def test_bad_model_config_is_a_clear_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        create_model(cfg, 10, img_size=32)


def test_mlp_grid_settings():
    for depth, widths in [(1, [512]), (2, [512, 256]), (3, [512, 256, 256])]:
        m = build("mlp", num_classes=10, depth=depth, activation="sigmoid", drop_rate=0.25)
        linears = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
        assert [l.out_features for l in linears] == widths + [10]
        assert linears[0].in_features == 3 * 32 * 32
        assert sum(isinstance(l, torch.nn.Sigmoid) for l in m.modules()) == depth
        assert {l.p for l in m.modules() if isinstance(l, torch.nn.Dropout)} == {0.25}
    grey = build("mlp", num_classes=10, in_chans=1, size=28, width=[64])
    assert grey.layers[0][0].in_features == 784
    assert outputs(grey, torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="784 inputs"):
        grey(torch.randn(2, 3, 28, 28))


def test_simple_cnn_variants():
    base = build("simple_cnn", num_classes=10)
    convs = [m for m in base.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64] and {c.kernel_size for c in convs} == {(3, 3)}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in base.modules())
    assert base.pre_logits[1].out_features == 128
    improved = build("simple_cnn", num_classes=10, variant="improved")
    convs = [m for m in improved.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in improved.modules()) == 6
    assert [m.p for m in improved.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.3, 0.4, 0.5]


def test_convmixer_defaults_and_head_interface():
    m = build("convmixer", num_classes=10)
    assert m.stem[0].kernel_size == (2, 2) and m.stem[0].out_channels == 256 and len(m.blocks) == 8
    assert m.blocks[0][0].fn[0].kernel_size == (5, 5)
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(0.59e6, rel=0.02)
    for model in (m, build("mlp"), build("simple_cnn")):
        model.reset_classifier(5)
        assert model.get_classifier().out_features == 5
        assert model.pretrained_cfg["classifier"] == "head" and len(model.pretrained_cfg["mean"]) == 3


def test_data_config():
    res = build("resnet18")
    dc = data_config(res, pretrained=True)
    assert dc["mean"] == pytest.approx((0.485, 0.456, 0.406)) and dc["interpolation"] == "bicubic"
    assert data_config(res, pretrained=False)["mean"] is None
    vit = build("vit_tiny_patch16_224", size=32, patch_size=4, kwargs={"depth": 1})
    assert data_config(vit, pretrained=False)["input_size"] == (3, 32, 32)
    assert data_config(vit, pretrained=True)["mean"] == (0.5, 0.5, 0.5)  # its weights' own statistics
    assert data_config(build("mlp", in_chans=1, size=28), False)["input_size"] == (1, 28, 28)


# --------------------------------------------------------------------------- local weights

@pytest.fixture(scope="module")
def resnet_pair():
    return build("resnet18", num_classes=10, seed=0), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module"])
def test_load_pretrained_pth_wrapped_and_prefixed(resnet_pair, tmp_path, wrapper):
    src, x = resnet_pair
    path = tmp_path / "ddp.pth"
    torch.save({wrapper: {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, path)
    dst = build("resnet18", num_classes=10, seed=5)
    report = load_pretrained(dst, path, num_classes=10)
    assert report["head_dropped"] == [] and len(report["loaded"]) == len(src.state_dict())
    torch.testing.assert_close(outputs(dst, x), outputs(src, x), rtol=0, atol=0)


def test_load_pretrained_safetensors(resnet_pair, tmp_path):
    src, x = resnet_pair
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    dst = build("resnet18", num_classes=10, seed=5)
    load_pretrained(dst, tmp_path / "w.safetensors")
    torch.testing.assert_close(outputs(dst, x), outputs(src, x), rtol=0, atol=0)


def test_other_num_classes_drops_only_the_head(resnet_pair, tmp_path, caplog):
    src, _ = resnet_pair
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build("resnet18", num_classes=4, seed=5)
    head_init = dst.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="imgtrain.models.pretrained"):
        report = load_pretrained(dst, tmp_path / "w.pt", num_classes=4)
    assert sorted(report["head_dropped"]) == ["fc.bias", "fc.weight"]
    assert "re-initialised" in caplog.text
    assert torch.equal(dst.fc.weight, head_init)
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(dst.state_dict()[k], v), k


def test_missing_file_says_nothing_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded") as e:
        load_pretrained(build("mlp"), tmp_path / "nope.pth", 3)
    assert "model.pretrained_path" in str(e.value) and "nope.pth" in str(e.value)


def test_wrong_architecture_is_a_clear_error(tmp_path):
    torch.save(build("simple_cnn", variant="base").state_dict(), tmp_path / "base.pth")
    with pytest.raises(WeightsMismatchError) as e:
        load_pretrained(build("simple_cnn", variant="improved"), tmp_path / "base.pth", 3)
    msg = str(e.value)
    assert "base.pth" in msg and "simple_cnn_improved" in msg
    assert "missing (features.0.1.weight" in msg and "mismatched" in msg


def test_torchvision_resnet_layout_loads_identically(tmp_path):
    import torchvision
    tv = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    ours = build("resnet18", num_classes=7, seed=3)
    load_pretrained(ours, tmp_path / "tv.pth", 7)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(outputs(ours, x), outputs(tv, x))


@pytest.mark.slow
def test_torchvision_vgg_layout_goes_through_timm_filter(tmp_path):
    import torchvision
    tv = torchvision.models.vgg11(weights=None, num_classes=5).eval()
    torch.save(tv.state_dict(), tmp_path / "tv_vgg11.pth")
    ours = build("vgg11", num_classes=5, seed=3)
    load_pretrained(ours, tmp_path / "tv_vgg11.pth", 5)
    x = torch.randn(2, 3, 64, 64)  # both pool the 2x2 feature map up to the 7x7 their first dense layer takes
    torch.testing.assert_close(outputs(ours, x), outputs(tv, x), rtol=1e-4, atol=1e-5)


def test_vit_weights_resample_to_another_img_size(tmp_path):
    src = build("vit_tiny_patch16_224", size=32, patch_size=4, kwargs={"depth": 2})
    torch.save(src.state_dict(), tmp_path / "vit32.pth")
    dst = build("vit_tiny_patch16_224", size=64, patch_size=4, kwargs={"depth": 2}, seed=9)
    load_pretrained(dst, tmp_path / "vit32.pth")
    assert dst.pos_embed.shape == (1, 257, 192)
    assert torch.equal(dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert torch.equal(dst.cls_token, src.cls_token)


# --------------------------------------------------------------------------- transfer learning

def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_backbone_trains_only_the_head_and_stops_bn_stats():
    m = build("resnet18")
    apply_transfer(m, ModelConfig(freeze_backbone=True))
    assert trainable(m) == {"fc.weight", "fc.bias"}
    groups = param_groups(m, OptimConfig(), ModelConfig())
    assert sorted(n for g in groups for n in g["param_names"]) == ["fc.bias", "fc.weight"]
    stats = m.bn1.running_mean.clone()
    for model in (m, copy.deepcopy(m)):  # the engine's EMA deep-copies the model
        model.train()
        model(torch.randn(2, 3, 32, 32) * 3 + 1)
        assert torch.equal(model.bn1.running_mean, stats) and model.layer1[0].bn1.training is False


def test_unfreeze_last_adds_the_last_block():
    m = build("resnet18")
    apply_transfer(m, ModelConfig(freeze_backbone=True, unfreeze_last=1))
    assert trainable(m) == {"fc.weight", "fc.bias"} | {n for n, _ in m.named_parameters() if n.startswith("layer4.")}
    vit = build("vit_tiny_patch16_224", size=32, patch_size=8, kwargs={"depth": 3})
    apply_transfer(vit, ModelConfig(freeze_backbone=True, unfreeze_last=2))
    assert {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "") for n in trainable(vit)} == {
        "blocks.1", "blocks.2", "norm", "head"}
    cnn = build("simple_cnn")  # the dense layer before the head is its own last group
    apply_transfer(cnn, ModelConfig(freeze_backbone=True, unfreeze_last=1))
    assert trainable(cnn) == {"head.weight", "head.bias", "pre_logits.1.weight", "pre_logits.1.bias"}
    with pytest.raises(ConfigError, match="freeze_backbone"):
        apply_transfer(build("mlp"), ModelConfig(unfreeze_last=1))


def test_block_groups_fallback_without_group_matcher():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
            self.head = torch.nn.Linear(4, 2)

        def get_classifier(self):
            return self.head

    assert block_groups(Net()) == [["stages.0.weight", "stages.0.bias"], ["stages.2.weight", "stages.2.bias"]]


def test_no_weight_decay_on_norms_biases_and_tokens():
    vit = build("vit_tiny_patch16_224", size=32, patch_size=8, kwargs={"depth": 1})
    groups = param_groups(vit, OptimConfig(weight_decay=0.05), ModelConfig())
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    shapes = dict(vit.named_parameters())
    assert len(wd) == len(shapes)
    for n, p in shapes.items():
        expected = 0.0 if p.ndim <= 1 or n in ("pos_embed", "cls_token") else 0.05
        assert wd[n] == expected, n
    assert {g["lr_scale"] for g in groups} == {1.0}
    everything = param_groups(vit, OptimConfig(weight_decay=0.05, decay_norm_and_bias=True), ModelConfig())
    assert [g["weight_decay"] for g in everything] == [0.05]


def test_lr_groups_first_match_wins():
    vit = build("vit_tiny_patch16_224", size=32, patch_size=8, kwargs={"depth": 2})
    cfg = ModelConfig(lr_groups={"head.*": 10.0, "blocks.1.*": 2.0, "blocks.*": 0.5})
    groups = param_groups(vit, OptimConfig(), cfg)
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert scale["head.weight"] == 10.0 and scale["head.bias"] == 10.0
    assert scale["blocks.1.mlp.fc1.weight"] == 2.0 and scale["blocks.0.attn.qkv.weight"] == 0.5
    assert scale["patch_embed.proj.weight"] == 1.0
    assert len({g["name"] for g in groups}) == len(groups)
    with pytest.raises(ConfigError, match="matches no parameter"):
        param_groups(vit, OptimConfig(), ModelConfig(lr_groups={"backbone.*": 0.1}))


def test_layer_decay_matches_timm_and_combines_with_lr_groups():
    from timm.optim import param_groups_layer_decay
    vit = build("vit_tiny_patch16_224", size=32, patch_size=8, kwargs={"depth": 3})
    name_of = {id(p): n for n, p in vit.named_parameters()}
    timm_scale = {name_of[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(vit, layer_decay=0.7)
                  for p in g["params"]}
    ours = param_groups(vit, OptimConfig(), ModelConfig(layer_decay=0.7, lr_groups={"head.*": 3.0}))
    scale = {n: g["lr_scale"] for g in ours for n in g["param_names"]}
    assert scale["head.weight"] == pytest.approx(3.0 * timm_scale["head.weight"])
    for n, s in timm_scale.items():
        if not n.startswith("head."):
            assert scale[n] == pytest.approx(s), n
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.7 ** 4)


def test_reinit_changes_only_the_named_layer():
    m = build("resnet18")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    apply_transfer(m, ModelConfig(reinit=["layer4.1.conv2"]))
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"layer4.1.conv2.weight"}
    with pytest.raises(ConfigError, match="matches no module"):
        apply_transfer(m, ModelConfig(reinit=["layer9*"]))


def test_param_groups_rejects_layer_decay_without_group_matcher():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="group_matcher"):
        param_groups(model, OptimConfig(), ModelConfig(layer_decay=0.5))
    groups = param_groups(model, OptimConfig(weight_decay=0.1), ModelConfig())
    assert {g["name"]: g["weight_decay"] for g in groups} == {"decay": 0.1, "no_decay": 0.0}
    assert sum(p.numel() for g in groups for p in g["params"]) == 6


def test_plateau_schedule_resumes_with_its_patience_counters():
    """timm's plateau scheduler saves only part of its state (it warns so); our checkpoint adds torch's
    ReduceLROnPlateau counters, so a run resumed between two bad epochs decays at the same epoch."""
    from imgtrain.config import SchedConfig
    from imgtrain.engine.optim import build_scheduler, load_scheduler_state, scheduler_state

    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, build_scheduler(SchedConfig(name="plateau", patience_epochs=2), opt, epochs=10,
                                    updates_per_epoch=1, mode="max")

    metrics = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    opt, sched = fresh()
    straight = []
    for epoch, metric in enumerate(metrics):
        sched.step(epoch + 1, metric)
        straight.append(opt.param_groups[0]["lr"])
    assert straight[0] == 0.1 and min(straight) < 0.1  # the schedule does decay within these epochs
    opt, sched = fresh()
    for epoch, metric in enumerate(metrics[:3]):  # stop with one bad epoch counted
        sched.step(epoch + 1, metric)
    saved = copy.deepcopy((opt.state_dict(), scheduler_state(sched)))
    opt, sched = fresh()
    opt.load_state_dict(saved[0])
    load_scheduler_state(sched, saved[1])
    resumed = []
    for epoch, metric in enumerate(metrics[3:], start=3):
        sched.step(epoch + 1, metric)
        resumed.append(opt.param_groups[0]["lr"])
    assert resumed == straight[3:]
