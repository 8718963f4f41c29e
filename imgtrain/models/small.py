"""From-scratch nets for small images: mlp, simple_cnn, convmixer, airbench, keras_cnn_base/improved.

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

from .local import register_model

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


def _frozen_scale_bn(width: int) -> nn.BatchNorm2d:
    """airbench's BatchNorm: scale fixed at 1, shift trained, fast running statistics."""
    bn = nn.BatchNorm2d(width, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad = False
    return bn


def _dirac_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    nn.init.dirac_(conv.weight.data[:cin])  # identity in the first filters: an implicit residual at init
    return conv


class _ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.pool, self.norm1 = _dirac_conv(cin, cout), nn.MaxPool2d(2), _frozen_scale_bn(cout)
        self.conv2, self.norm2, self.act = _dirac_conv(cout, cout), _frozen_scale_bn(cout), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirbenchNet(_SmallNet):
    """Keller Jordan's airbench94 CIFAR-10 net: a frozen patch-whitening conv, three conv groups
    (conv, max-pool, BN, GELU, conv, BN, GELU; dirac init), global max-pool, bias-free head x 1/9.

    The whitening filters come from the first training batch (airbench uses 5,000 training images):
    the model needs no data at build time, and the `whitened` buffer keeps a resumed run from redoing it.
    `tta` 1 averages the logits of the image and its mirror in eval mode, 2 adds 1-pixel translations.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (64, 256, 256),
                 whiten_kernel: int = 2, tta: int = 0, logit_scale: float = 1 / 9):
        super().__init__()
        self.num_classes, self.tta, self.logit_scale = num_classes, tta, logit_scale
        stem = 2 * in_chans * whiten_kernel ** 2  # +/- pairs of every eigenvector of the patch covariance
        self.whiten = nn.Conv2d(in_chans, stem, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        nn.init.zeros_(self.whiten.bias)
        self.register_buffer("whitened", torch.tensor(False))
        self._whitened = False  # mirrors the buffer so that forward needs no device sync once set
        self.act = nn.GELU()
        self.blocks = nn.Sequential(*[_ConvGroup(a, b) for a, b in zip([stem, *widths[:-1]], widths)])
        self.pool = nn.AdaptiveMaxPool2d(1)  # airbench's MaxPool2d(3) on the 3x3 map of a 32 px input
        self.num_features = widths[-1]
        self.head = nn.Linear(widths[-1], num_classes, bias=False) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^whiten", blocks=r"^blocks\.(\d+)")

    @torch.no_grad()
    @torch.compiler.disable
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Filters = eigenvectors of the input's patch covariance / sqrt(eigenvalue + eps). The covariance
        is averaged over DDP ranks, so every rank gets the same (frozen, never synchronised) filters."""
        k, c = self.whiten.kernel_size[0], x.shape[1]
        with torch.autocast(x.device.type, enabled=False):
            patches = x.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
            cov = patches.T @ patches / len(patches)
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(cov)
                cov /= torch.distributed.get_world_size()
            evals, evecs = torch.linalg.eigh(cov)
            filters = evecs.T.flip(0).reshape(-1, c, k, k) / torch.sqrt(evals.flip(0) + eps).view(-1, 1, 1, 1)
        self.whiten.weight.copy_(torch.cat((filters, -filters)))
        self.whitened.fill_(True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._whitened:
            if not bool(self.whitened):  # one sync, until set (a resumed model has it from its checkpoint)
                self.init_whitening(x)
            self._whitened = True
        return self.pool(self.blocks(self.act(self.whiten(x)))).flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.tta:
            return _SmallNet.forward(self, x)
        logits = self._mirrored(x)
        if self.tta >= 2:  # airbench's level 2: also the image shifted by 1 px up-left and down-right
            padded = nn.functional.pad(x, (1,) * 4, mode="reflect")
            h, w = x.shape[-2:]
            logits = 0.5 * logits + 0.25 * (self._mirrored(padded[..., :h, :w]) + self._mirrored(padded[..., 2:, 2:]))
        return logits

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * _SmallNet.forward(self, x) + 0.5 * _SmallNet.forward(self, x.flip(-1))


class KerasCNN(_SmallNet):
    """S004's two CIFAR-10 CNNs (annex 4.1), layer for layer as the study's Keras summaries print them.

    Each conv: Conv2D 3x3, stride 1, 'valid' padding, ReLU, then MaxPooling2D 2x2 (floor: 13 -> 6). Then
    [Dropout(conv_drop)] -> Flatten -> Dense 128 ReLU (`fc1`) -> [Dropout(dense_drop)] -> Dense (`head`;
    the study's softmax is in the loss). Flatten is Keras's channels-last order (H, W, C), so Keras weights
    map one to one. Keras init: Glorot-uniform kernels, zero biases.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 32,
                 widths: Sequence[int] = (64,), dense: int = 128, conv_drop: Optional[float] = None,
                 dense_drop: Optional[float] = None):
        super().__init__()
        side = img_size
        for i, (cin, cout) in enumerate(zip([in_chans, *widths[:-1]], widths), 1):
            self.add_module(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=0))
            self.add_module(f"pool{i}", nn.MaxPool2d(2))
            side = (side - 2) // 2
        if side < 1:
            raise ValueError(f"keras_cnn: img_size {img_size} is too small for {len(widths)} conv + pool layers")
        self.n_convs, self.num_classes = len(widths), num_classes
        self.act = nn.ReLU()
        self.drop1 = nn.Dropout(conv_drop) if conv_drop is not None else nn.Identity()
        self.fc1 = nn.Linear(widths[-1] * side * side, dense)
        self.drop2 = nn.Dropout(dense_drop) if dense_drop is not None else nn.Identity()
        self.num_features = dense
        self.head = nn.Linear(dense, num_classes) if num_classes > 0 else nn.Identity()
        _keras_init(self)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        _keras_init(self.head)

    def group_matcher(self, coarse: bool = False) -> dict:
        # fc1 is left unmatched: timm puts it in the last group, with the head
        return dict(stem=r"^conv1\.", blocks=r"^conv(\d+)\.")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_convs + 1):
            x = getattr(self, f"pool{i}")(self.act(getattr(self, f"conv{i}")(x)))
        x = self.drop1(x).permute(0, 2, 3, 1).flatten(1)  # Keras Flatten: channels last
        return self.drop2(self.act(self.fc1(x)))


def _keras_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)



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


@register_model
def airbench(num_classes: int = 10, in_chans: int = 3, img_size: int = 32, width: Optional[Sequence[int]] = None,
             kernel_size: Optional[int] = None, tta: int = 0) -> AirbenchNet:
    """airbench94's net (jobs/configs/cifar10_fast.yaml). model.width: the three group widths (default
    64, 256, 256); model.kernel_size: the whitening patch (default 2); model.kwargs.tta: 0, 1 or 2."""
    if width is not None and len(width) != 3:
        raise ConfigError(f"model.width: airbench has 3 conv groups, got {list(width)}")
    if tta not in (0, 1, 2):
        raise ConfigError(f"model.kwargs.tta: 0 (none), 1 (mirror) or 2 (mirror + translate), got {tta!r}")
    model = AirbenchNet(num_classes, in_chans, widths=tuple(width or (64, 256, 256)),
                        whiten_kernel=kernel_size or 2, tta=tta)
    return _set_cfg(model, "airbench", in_chans, img_size, num_classes)


@register_model
def keras_cnn_base(num_classes: int = 10, in_chans: int = 3, img_size: int = 32) -> KerasCNN:
    """S004 "CNN base" (4.1.1): Conv2D 64 (3x3 valid, ReLU) -> MaxPool 2x2 -> Flatten -> Dense 128 ReLU ->
    Dense 10: 1,846,410 parameters at 32x32x3, as the study's summary. Keras init."""
    model = KerasCNN(num_classes, in_chans, img_size, widths=(64,))
    return _set_cfg(model, "keras_cnn_base", in_chans, img_size, num_classes)


# S004 does not state the improved CNN's dropout rates: 0.25 after the convs and 0.5 after the dense layer,
# the Keras examples' (mnist_cnn, cifar10_cnn) values, are ours.
KERAS_CNN_DROPS = (0.25, 0.5)


@register_model
def keras_cnn_improved(num_classes: int = 10, in_chans: int = 3, img_size: int = 32, drop_rate: float = 0.0,
                       conv_drop: Optional[float] = None, dense_drop: Optional[float] = None) -> KerasCNN:
    """S004 "CNN improved" (4.1.2): Conv2D 64 -> MaxPool -> Conv2D 128 -> MaxPool (3x3 valid convs, ReLU)
    -> Dropout -> Flatten -> Dense 128 ReLU (`fc1`, the study's L2 layer: model.wd_groups {"fc1.weight": 2*l})
    -> Dropout -> Dense 10: 666,890 parameters at 32x32x3, as the study's summary. Keras init.

    The study states neither dropout rate: defaults 0.25 and 0.5 (KERAS_CNN_DROPS, our choice);
    `model.drop_rate` > 0 sets both; model.kwargs conv_drop / dense_drop set each (0 allowed).
    Nor does it state the L2 factor (check the recipe).
    """
    conv = conv_drop if conv_drop is not None else drop_rate or KERAS_CNN_DROPS[0]
    dense = dense_drop if dense_drop is not None else drop_rate or KERAS_CNN_DROPS[1]
    model = KerasCNN(num_classes, in_chans, img_size, widths=(64, 128), conv_drop=conv, dense_drop=dense)
    return _set_cfg(model, "keras_cnn_improved", in_chans, img_size, num_classes)
