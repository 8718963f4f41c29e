"""From-scratch nets for small images: mlp, simple_cnn, convmixer.

They follow timm's model interface (`get_classifier`, `reset_classifier`, `forward_features`,
`forward_head`, `group_matcher`, `pretrained_cfg`), so transfer helpers and layer decay treat them
like any timm model.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.convmixer import ConvMixer

from imgtrain.config import ConfigError

from .registry import register_model

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def _act(name: str) -> type[nn.Module]:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"model.activation: '{name}' is not one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _set_cfg(model: nn.Module, name: str, in_chans: int, img_size: int, num_classes: int) -> nn.Module:
    """Attach a timm-style pretrained_cfg; mean/std only matter when weights trained with them are loaded."""
    rgb = in_chans == 3
    model.pretrained_cfg = dict(
        architecture=name,
        input_size=(in_chans, img_size, img_size),
        interpolation="bilinear",
        crop_pct=1.0,  # small images: resize only, no centre crop
        crop_mode="center",
        mean=IMAGENET_DEFAULT_MEAN if rgb else (0.5,) * in_chans,
        std=IMAGENET_DEFAULT_STD if rgb else (0.5,) * in_chans,
        num_classes=num_classes,
        classifier="head",
    )
    model.default_cfg = model.pretrained_cfg
    return model


class _SmallNet(nn.Module):
    """timm's classifier interface over `self.head`, fed by `forward_features`."""

    num_features: int
    head: nn.Module

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MLP(_SmallNet):
    """Flatten -> [Linear, activation, Dropout] per hidden width -> Linear classifier."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 32,
                 width: Sequence[int] = (512, 256, 256), activation: str = "relu", drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.in_features = in_chans * img_size * img_size
        act = _act(activation)
        blocks, prev = [], self.in_features
        for w in width:
            blocks.append(nn.Sequential(nn.Linear(prev, w), act(), nn.Dropout(drop_rate)))
            prev = w
        self.layers = nn.Sequential(*blocks)
        self.num_features = prev
        self.head = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=None, blocks=r"^layers\.(\d+)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"mlp was built for {self.in_features} inputs (in_chans x img_size^2), got {x.shape[1]}")
        return self.layers(x)


def _conv_block(cin: int, cout: int, n_convs: int, bn: bool, drop: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.MaxPool2d(2))
    if drop:
        layers.append(nn.Dropout(drop))
    return nn.Sequential(*layers)


# The two Keras-style CIFAR-10 baselines: a plain 2-block net and a deeper, regularised one.
_CNN_VARIANTS = {
    "base": dict(widths=(32, 64), convs=1, bn=False, block_drop=(0.0, 0.0), dense_drop=0.0),
    "improved": dict(widths=(32, 64, 128), convs=2, bn=True, block_drop=(0.2, 0.3, 0.4), dense_drop=0.5),
}


class SimpleCNN(_SmallNet):
    """Conv blocks (3x3 'same' convs, ReLU, 2x2 max-pool) -> flatten -> dense 128 -> classifier."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 32,
                 widths: Sequence[int] = (32, 64), convs: int = 1, bn: bool = False,
                 block_drop: Sequence[float] = (0.0, 0.0), dense: int = 128, dense_drop: float = 0.0):
        super().__init__()
        if len(block_drop) != len(widths):
            raise ValueError(f"simple_cnn: block_drop has {len(block_drop)} rates for {len(widths)} blocks")
        side = img_size // 2 ** len(widths)
        if side < 1:
            raise ValueError(f"simple_cnn: img_size {img_size} is too small for {len(widths)} pooling blocks")
        self.num_classes = num_classes
        self.features = nn.Sequential(*[
            _conv_block(cin, cout, convs, bn, d)
            for cin, cout, d in zip([in_chans, *widths[:-1]], widths, block_drop)])
        self.pre_logits = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(widths[-1] * side * side, dense, bias=not bn),
            *([nn.BatchNorm1d(dense)] if bn else []),
            nn.ReLU(inplace=True),
            nn.Dropout(dense_drop),
        )
        self.num_features = dense
        self.head = nn.Linear(dense, num_classes) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        # pre_logits is left unmatched: timm puts it in the last group, with the head
        return dict(stem=None, blocks=r"^features\.(\d+)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_logits(self.features(x))


@register_model
def mlp(num_classes: int = 10, in_chans: int = 3, img_size: int = 32, depth: Optional[int] = None,
        width: Optional[Sequence[int]] = None, activation: Optional[str] = None, drop_rate: float = 0.0) -> MLP:
    """MLP for the CIFAR-10 grid study: depth 1..3 hidden layers, widths default [512, 256, 256][:depth]."""
    if width is None:
        depth = 2 if depth is None else depth
        if not 1 <= depth <= 3:
            raise ConfigError(f"model.depth: mlp takes 1..3 hidden layers without model.width, got {depth}")
        width = [512, 256, 256][:depth]
    elif depth is not None and depth != len(width):
        raise ConfigError(f"model.depth ({depth}) disagrees with model.width ({list(width)}); set one of them")
    model = MLP(num_classes, in_chans, img_size, width=width, activation=activation or "relu", drop_rate=drop_rate)
    return _set_cfg(model, "mlp", in_chans, img_size, num_classes)


@register_model
def simple_cnn(num_classes: int = 10, in_chans: int = 3, img_size: int = 32, variant: Optional[str] = None,
               drop_rate: float = 0.0, **kwargs) -> SimpleCNN:
    """variant 'base' (2 blocks 32/64) or 'improved' (3 double-conv BN blocks 32/64/128 with dropout).

    `model.drop_rate` > 0 replaces the variant's dropout before the classifier; model.kwargs may override
    any SimpleCNN argument (widths, convs, bn, block_drop, dense, dense_drop).
    """
    variant = variant or "base"
    if variant not in _CNN_VARIANTS:
        raise ConfigError(f"model.variant: simple_cnn has variants {', '.join(_CNN_VARIANTS)}, not '{variant}'")
    args = dict(_CNN_VARIANTS[variant])
    if drop_rate:
        args["dense_drop"] = drop_rate
    args.update(kwargs)
    model = SimpleCNN(num_classes, in_chans, img_size, **args)
    return _set_cfg(model, f"simple_cnn_{variant}", in_chans, img_size, num_classes)


@register_model
def convmixer(num_classes: int = 10, in_chans: int = 3, img_size: int = 32, dim: Optional[int] = None,
              depth: Optional[int] = None, kernel_size: Optional[int] = None, patch_size: Optional[int] = None,
              activation: Optional[str] = None, drop_rate: float = 0.0) -> ConvMixer:
    """ConvMixer of any size (timm registers only the large ImageNet ones). Defaults: ConvMixer-256/8,
    kernel 5, patch 2 for images up to 64 px (patch 7 above, as in the paper for ImageNet)."""
    if patch_size is None:
        patch_size = 2 if img_size <= 64 else 7
    model = ConvMixer(dim=dim or 256, depth=depth or 8, kernel_size=kernel_size or 5, patch_size=patch_size,
                      in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate,
                      act_layer=_act(activation or "gelu"))
    return _set_cfg(model, "convmixer", in_chans, img_size, num_classes)
