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
    family("mobilevit_xxs", {}, slow=True),
    family("densenet121", {}, slow=True),
    family("inception_v3", {}, size=75, slow=True),  # its stem needs >= 75 px
    family("mobilenetv2_100", {}, slow=True),
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
    assert list_models("*", include_timm=False) == ["airbench", "convmixer", "keras_cnn_base", "keras_cnn_improved",
                                                    "mlp", "simple_cnn"]
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


# --------------------------------------------------------------------------- issue 17: study settings

def keras_glorot_ok(weight, fan_in, fan_out):
    """Glorot-uniform: |w| <= sqrt(6 / (fan_in + fan_out)), std close to bound / sqrt(3)."""
    bound, weight = (6 / (fan_in + fan_out)) ** 0.5 * (1 + 1e-6), weight.detach()
    return float(weight.abs().max()) <= bound and abs(float(weight.std()) - bound / 3 ** 0.5) < 0.1 * bound


def test_keras_cnns_are_the_s004_networks():
    """S004 annex 4.1: the Keras summaries' per-layer and total parameter counts, Keras init, dropouts."""
    base = build("keras_cnn_base", num_classes=10)
    assert sum(p.numel() for p in base.parameters()) == 1_846_410
    assert [p.numel() for n, p in base.named_parameters() if n.endswith("weight")] == [1728, 1_843_200, 1280]
    assert {n: p.numel() for n, p in base.named_parameters() if n.endswith("bias")} == {
        "conv1.bias": 64, "fc1.bias": 128, "head.bias": 10}  # 1,792 / 1,843,328 / 1,290 with the weights
    improved = build("keras_cnn_improved", num_classes=10)
    assert sum(p.numel() for p in improved.parameters()) == 666_890
    per_layer = {}
    for n, p in improved.named_parameters():
        per_layer[n.split(".")[0]] = per_layer.get(n.split(".")[0], 0) + p.numel()
    assert per_layer == {"conv1": 1792, "conv2": 73_856, "fc1": 589_952, "head": 1290}
    assert [m.p for m in improved.modules() if isinstance(m, torch.nn.Dropout)] == [0.25, 0.5]  # not stated
    assert [m.p for m in build("keras_cnn_improved", drop_rate=0.3).modules()
            if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]
    assert not any(isinstance(m, torch.nn.Dropout) for m in base.modules())
    for model in (base, improved):
        assert outputs(model, torch.randn(2, 3, 32, 32)).shape == (2, 10)
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                rf = m.weight[0, 0].numel() if m.weight.ndim == 4 else 1
                assert keras_glorot_ok(m.weight, m.weight.shape[1] * rf, m.weight.shape[0] * rf), name
                assert not m.bias.any(), name
    # Keras flattens channels last: fc1's input i is (h, w, c) = divmod chain over (6, 6, 128)
    x = torch.zeros(1, 128, 6, 6)
    x[0, 5, 1, 2] = 1.0
    flat = improved.drop1(x).permute(0, 2, 3, 1).flatten(1)
    assert flat[0].nonzero().item() == (1 * 6 + 2) * 128 + 5
    with pytest.raises(ConfigError, match="drop_rate does not apply"):
        build("keras_cnn_base", drop_rate=0.5)


def test_dense_head_on_a_timm_backbone():
    cfg = dict(head_hidden=[32, 16], head_activation="gelu", head_dropout=0.1, drop_rate=0.2)
    m = build("resnet18", num_classes=3, **cfg)
    head = m.get_classifier()
    assert head is m.dense_head and m.num_classes == 3 and type(m).__name__ == "ResNet"
    layers = [type(x).__name__ for x in head.modules() if not isinstance(x, (torch.nn.Sequential, type(head)))]
    assert layers == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert [(x.in_features, x.out_features) for x in head.modules() if isinstance(x, torch.nn.Linear)] == [
        (512, 32), (32, 16), (16, 3)]
    assert [x.p for x in head.modules() if isinstance(x, torch.nn.Dropout)] == [0.1, 0.1]
    for x in head.modules():  # Keras Dense init
        if isinstance(x, torch.nn.Linear):
            assert keras_glorot_ok(x.weight, x.in_features, x.out_features) and not x.bias.any()
    assert not any(p.numel() for p in m.fc.parameters())  # timm's own classifier is gone
    x = torch.randn(2, 3, 32, 32)
    assert outputs(m, x).shape == (2, 3)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 16)  # features.py's pre_logits
    # model.drop_rate still drops the pooled features before the head (timm's own dropout)
    seen = []
    hook = m.dense_head.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    m.train()
    m(x)
    hook.remove()
    assert m.drop_rate == 0.2 and (seen[-1] == 0).float().mean() > 0.1
    # freeze_backbone trains exactly the new head; deepcopy (EMA) keeps the class
    apply_transfer(m, ModelConfig(freeze_backbone=True))
    assert trainable(m) == {n for n, _ in m.named_parameters() if n.startswith("dense_head.")} and len(trainable(m)) == 6
    assert sorted(n for g in param_groups(m, OptimConfig(), ModelConfig()) for n in g["param_names"]) == sorted(
        trainable(m))
    import pickle
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):  # EMA deep-copies; pickling reaches the base class
        assert type(twin) is type(m) and torch.equal(outputs(twin, x), outputs(m, x))
    # a ViT keeps its pooling (class token) and fc_norm; 7 hidden layers as S001's "7 (0.1)"
    vit = build("vit_tiny_patch16_224", size=32, patch_size=8, kwargs={"depth": 1},
                head_hidden=[64, 64, 32, 32, 16, 16, 8], head_dropout=0.1)
    assert len(vit.dense_head.hidden) == 7 and outputs(vit, torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_dense_head_loads_the_backbone_and_drops_the_old_classifier(tmp_path):
    plain = build("resnet18", num_classes=7, seed=1)
    save_file(plain.state_dict(), tmp_path / "r18.safetensors")
    m = build("resnet18", num_classes=3, head_hidden=[16])
    head_before = copy.deepcopy(m.dense_head.state_dict())
    report = load_pretrained(m, tmp_path / "r18.safetensors", 3)
    assert sorted(report["head_dropped"]) == ["fc.bias", "fc.weight"]
    assert torch.equal(m.layer4[1].conv2.weight, plain.layer4[1].conv2.weight)
    assert all(torch.equal(v, head_before[k]) for k, v in m.dense_head.state_dict().items())
    torch.save(m.state_dict(), tmp_path / "headed.pth")  # a run's own weights: the dense head loads too
    again = build("resnet18", num_classes=3, head_hidden=[16], seed=5)
    assert load_pretrained(again, tmp_path / "headed.pth", 3)["head_dropped"] == []
    assert torch.equal(again.dense_head.fc.weight, m.dense_head.fc.weight)


def test_flatten_head_is_keras_flatten_of_the_last_map(tmp_path):
    # VGG16 at 32 px (S004 4.3): conv base -> 1x1x512 -> Flatten -> Dropout -> Dense -> Dense
    vgg_kw = dict(kwargs={"mlp_ratio": 1 / 64})
    vgg = build("vgg16", num_classes=10, head_pool="flatten", head_hidden=[256], drop_rate=0.5, **vgg_kw)
    assert vgg.imgtrain_unused == ["pre_logits"] and vgg.dense_head.in_features == 512
    assert not any(n.startswith(("pre_logits.", "head.")) for n, _ in vgg.named_parameters())
    assert outputs(vgg, torch.randn(2, 3, 32, 32)).shape == (2, 10)
    seen = []
    vgg.dense_head.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    vgg.train()
    vgg(torch.rand(4, 3, 32, 32))
    assert seen[-1].shape == (4, 512) and 0.3 < float((seen[-1] == 0).float().mean()) < 0.7  # drop_rate 0.5
    save_file(build("vgg16", num_classes=1000, **vgg_kw).state_dict(), tmp_path / "vgg16.safetensors")
    report = load_pretrained(vgg, tmp_path / "vgg16.safetensors", 10)
    assert sorted(report["head_dropped"]) == ["head.fc.bias", "head.fc.weight"]
    assert {k.split(".")[0] for k in report["ignored"]} == {"pre_logits"}
    apply_transfer(vgg, ModelConfig(freeze_backbone=True))
    assert {n.split(".")[0] for n in trainable(vgg)} == {"dense_head"}
    # ResNet-18 at 64 px: a 2x2x512 map flattened (not pooled) -> 2048 inputs
    r = build("resnet18", size=64, head_pool="flatten")
    assert r.dense_head.in_features == 2048 and r.imgtrain_unused == []
    assert outputs(r, torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert build("resnet18", head_pool="catavgmax").dense_head.in_features == 1024


def test_dense_head_config_errors():
    with pytest.raises(ConfigError, match="head_activation"):
        ModelConfig(head_hidden=[8], head_activation="swish2")
    with pytest.raises(ConfigError, match="head_hidden"):
        ModelConfig(head_dropout=0.1)
    with pytest.raises(ConfigError, match="head_pool"):
        ModelConfig(head_pool="mean")
    with pytest.raises(ConfigError, match="pools itself"):
        build("mlp", depth=1, head_hidden=[8], head_pool="avg")
    m = build("mlp", depth=1, head_hidden=[8])  # local nets take a dense head too
    assert outputs(m, torch.randn(2, 3, 32, 32)).shape == (2, 3) and m.dense_head.in_features == 512


def test_wd_groups_keras_l2_on_one_layer():
    m = build("keras_cnn_improved", num_classes=10)
    cfg = ModelConfig(wd_groups={"fc1.weight": 2e-3, "head.*": 1e-4})
    groups = param_groups(m, OptimConfig(name="adam", weight_decay=0.0), cfg)
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert wd == {"conv1.weight": 0.0, "conv1.bias": 0.0, "conv2.weight": 0.0, "conv2.bias": 0.0,
                  "fc1.weight": 2e-3, "fc1.bias": 0.0, "head.weight": 1e-4, "head.bias": 1e-4}  # explicit: biases too
    assert len({g["name"] for g in groups}) == len(groups)
    with pytest.raises(ConfigError, match="wd_groups: 'fc9.*' matches no parameter"):
        param_groups(m, OptimConfig(), ModelConfig(wd_groups={"fc9.*": 1e-3}))
    # Keras L2(lam) = loss + lam * ||w||^2  ==  torch Adam/SGD weight_decay = 2 * lam (coupled L2)
    lam, x, y = 1e-2, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    a, b = copy.deepcopy(m).eval(), copy.deepcopy(m).eval()
    opt_a = torch.optim.Adam(param_groups(a, OptimConfig(weight_decay=0.0), ModelConfig(wd_groups={"fc1.weight": 2 * lam})))
    opt_b = torch.optim.Adam(b.parameters())
    for _ in range(3):
        opt_a.zero_grad(), opt_b.zero_grad()
        F.cross_entropy(a(x), y).backward()
        (F.cross_entropy(b(x), y) + lam * b.fc1.weight.pow(2).sum()).backward()
        opt_a.step(), opt_b.step()
    assert torch.allclose(a.fc1.weight, b.fc1.weight, atol=1e-6) and torch.allclose(a.head.weight, b.head.weight, atol=1e-6)


def test_reinit_init_choices():
    m = build("keras_cnn_improved")
    apply_transfer(m, ModelConfig(reinit=["conv2", "fc1"], reinit_init="uniform"))
    for layer, fan_in in ((m.conv2, 64 * 9), (m.fc1, 4608)):  # Torch7: weight and bias ~ U(+-1/sqrt(fan_in))
        bound = fan_in ** -0.5
        for t in (layer.weight.detach(), layer.bias.detach()):
            assert float(t.abs().max()) <= bound * (1 + 1e-6) and float(t.abs().max()) > 0.9 * bound
        assert abs(float(layer.weight.detach().std()) - bound / 3 ** 0.5) < 0.05 * bound
    apply_transfer(m, ModelConfig(reinit=["fc1"], reinit_init="glorot_uniform"))
    assert keras_glorot_ok(m.fc1.weight, 4608, 128) and not m.fc1.bias.any()
    with pytest.raises(ConfigError, match="reinit_init"):
        ModelConfig(reinit_init="normal")


# S002's "optimal model" (5.2.2) on timm's vgg19: conv1-conv10 = features.0 ... features.21, fc6/fc7 =
# pre_logits.fc1/fc2, fc8 = head.fc, re-initialised (Torch7 uniform) at lr 1e-2 (x1); conv11-16 =
# features.23 ... features.34 at 1e-4 (x0.01); the 1000-way output kept.
S002_OPTIMAL = dict(reinit=["features.[0-9]", "features.1[0-9]", "features.2[01]", "pre_logits", "head"],
                    reinit_init="uniform", lr_groups={"features.2[3-9].*": 0.01, "features.3?.*": 0.01})
VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]  # conv1 ... conv16


def test_s002_optimal_model_patterns_on_full_vgg19_names():
    import fnmatch

    import timm
    with torch.device("meta"):  # the real 143.7 M-parameter vgg19, names only
        full = timm.create_model("vgg19", pretrained=False, num_classes=1000)
    convs = [n for n, mod in full.named_modules() if isinstance(mod, torch.nn.Conv2d) and n.startswith("features.")]
    assert convs == [f"features.{i}" for i in VGG19_CONVS]
    hit = [n for n in convs if any(fnmatch.fnmatchcase(n, p) for p in S002_OPTIMAL["reinit"])]
    assert hit == convs[:10]
    assert {n for n, _ in full.named_modules() if n.startswith(("pre_logits.fc", "head.fc"))} == {
        "pre_logits.fc1", "pre_logits.fc2", "head.fc"}
    assert full.pre_logits.fc1.weight.shape == (4096, 512, 7, 7) and full.head.fc.out_features == 1000


def test_s002_optimal_model_reinit_and_lr_groups_on_vgg19():
    # the real vgg19 conv tower and module names; fc6/fc7 narrowed (mlp_ratio) to keep the test small
    m = build("vgg19", num_classes=1000, size=32, kwargs={"mlp_ratio": 1 / 64})
    before = {k: v.clone() for k, v in m.state_dict().items()}
    apply_transfer(m, ModelConfig(**S002_OPTIMAL))
    changed = {k.rsplit(".", 1)[0] for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"features.{i}" for i in VGG19_CONVS[:10]} | {"pre_logits.fc1", "pre_logits.fc2", "head.fc"}
    for name in ("features.0", "features.21", "pre_logits.fc1", "head.fc"):  # Torch7 uniform bounds
        layer = m.get_submodule(name)
        bound = layer.weight[0].numel() ** -0.5 * (1 + 1e-6)  # float32 rounding
        assert float(layer.weight.detach().abs().max()) <= bound and float(layer.bias.detach().abs().max()) <= bound, name
    groups = param_groups(m, OptimConfig(lr=1e-2), ModelConfig(**S002_OPTIMAL))
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert len(scale) == 2 * (16 + 3)
    for n, s in scale.items():
        layer = n.rsplit(".", 1)[0]
        slow = layer in {f"features.{i}" for i in VGG19_CONVS[10:]}
        assert s == (0.01 if slow else 1.0), n
    assert outputs(m, torch.randn(1, 3, 32, 32)).shape == (1, 1000)
