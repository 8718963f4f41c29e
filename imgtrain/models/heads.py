"""Dense classification heads on any backbone: `model.head_hidden`, `head_activation`, `head_dropout`, `head_pool`.

The Keras transfer-learning pattern (`include_top=False` + Flatten/GlobalPooling + Dense layers with dropout,
e.g. S001's InceptionResNetV2 "7 (0.1)" head and S004's ResNet50/VGG16 heads) on a timm model or one of our
local nets, through timm's classifier interface:

- the backbone's own classifier is removed with `reset_classifier(0)` (its pooling kept, or replaced by
  timm's pooling named in `model.head_pool`), and a `DenseHead` is attached as the module `dense_head`;
- `head_pool` None/avg/max/...: the head reads `forward_head(x, pre_logits=True)` of the backbone, i.e.
  timm's pooling, `model.drop_rate` dropout and whatever the model has between its pooling and its
  classifier (VGG's fc6/fc7 `pre_logits` ConvMlp, ViT's fc_norm);
- `head_pool="flatten"`: the head reads `forward_features(x)` flattened (Keras's Flatten of the last feature
  map; at 32 px ResNet50's and VGG16's maps are 1x1, so it equals global pooling there), then
  `model.drop_rate` dropout. Modules with parameters that `forward_features` never calls (VGG's fc6/fc7
  `pre_logits`, MobileNetV3's `conv_head`) become nn.Identity, as Keras's `include_top=False` has no such
  layers; `load_pretrained` ignores their tensors in a weights file (listed in `model.imgtrain_unused`).
  PyTorch flattens channels-first (C, H, W) where Keras flattens (H, W, C): same layer, permuted rows;
- `DenseHead` = [Linear(w), activation, Dropout(head_dropout)] per hidden width w, then Linear(num_classes).
  Keras init throughout: Glorot-uniform kernels, zero biases (Keras Dense defaults; PyTorch's default
  Linear init differs).

The model keeps its class's behaviour and parameter names (the backbone's weights load as before; the old
classifier's tensors in a file are dropped as a head of another shape); its class becomes a subclass that
overrides get_classifier/reset_classifier/forward_head, so `freeze_backbone` trains exactly `dense_head`
(transfer.py counts get_classifier()'s module as the classifier), `lr_groups`/`wd_groups` patterns name it
`dense_head.*`, and `forward_head(pre_logits=True)` (features.py) returns the last hidden layer's output.

S001 (InceptionResNetV2 _10/_18, "Layers (DropOut) 7 (0.1)"): 7 dense layers, dropout 0.1 (whether the 7
count the softmax layer is not stated: the recipe takes 7 hidden layers). The document states neither
their widths nor their activation (only that leaky ReLU was tried without a difference): a recipe chooses
`head_hidden` and `head_activation` and must say so.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from imgtrain.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

HEAD = "dense_head"  # module name of the new head
UNUSED_ATTR = "imgtrain_unused"  # model attribute: module names replaced by nn.Identity (flatten pooling)

ACTIVATIONS = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU, "selu": nn.SELU, "softplus": nn.Softplus,
}
assert set(ACTIVATIONS) == set(ModelConfig.HEAD_ACTIVATIONS)
TIMM_POOLS = ("avg", "max", "avgmax", "catavgmax")


def keras_init_(module: nn.Module) -> nn.Module:
    """Keras's default init on every Linear/Conv of `module`: Glorot-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class DenseHead(nn.Module):
    """Flatten -> [Linear(w), activation, Dropout(dropout)] per hidden width -> Linear(num_classes).

    Parameter names: `hidden.<i>.fc.{weight,bias}`, `fc.{weight,bias}`. num_classes 0: no final Linear
    (the output is the last hidden layer). Keras init (Glorot-uniform kernels, zero biases).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, activation: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.head_activation: '{activation}' is not one of {', '.join(ACTIVATIONS)}")
        self.in_features, self.widths = in_features, list(hidden)
        self.activation, self.dropout, self.num_classes = activation, dropout, num_classes
        layers, prev = [], in_features
        for w in hidden:
            layers.append(nn.Sequential(OrderedDict(
                fc=nn.Linear(prev, w), act=ACTIVATIONS[activation](), drop=nn.Dropout(dropout))))
            prev = w
        self.hidden = nn.Sequential(*layers)
        self.num_features = prev
        self.fc = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()
        keras_init_(self)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(x.flatten(1))
        return x if pre_logits else self.fc(x)


class _DenseHeadMixin:
    """Overrides timm's classifier interface of the model's own class (see the module docstring)."""

    _imgtrain_base: type
    dense_head: DenseHead
    _head_flatten: bool
    _head_drop: float

    def get_classifier(self) -> nn.Module:
        return self.dense_head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head of the same hidden layers for `num_classes` (the pooling stays as built)."""
        h = self.dense_head
        self.dense_head = DenseHead(h.in_features, h.widths, num_classes, h.activation, h.dropout)
        self.num_classes = num_classes

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self._head_flatten:
            x = F.dropout(x.flatten(1), self._head_drop, self.training) if self._head_drop else x.flatten(1)
        else:
            x = self._imgtrain_base.forward_head(self, x, pre_logits=True)
        return self.dense_head(x, pre_logits=pre_logits)

    def __reduce_ex__(self, protocol):  # pickle / deepcopy through the base class (the subclass is dynamic)
        return _rebuild, (self._imgtrain_base,), self.__dict__.copy()


_classes: dict[type, type] = {}


def _headed_class(base: type) -> type:
    if base not in _classes:
        _classes[base] = type(base.__name__, (_DenseHeadMixin, base),
                              {"__module__": base.__module__, "_imgtrain_base": base,
                               "__qualname__": f"{base.__qualname__}[dense_head]"})
    return _classes[base]


def _rebuild(base: type) -> nn.Module:
    cls = _headed_class(base)
    return cls.__new__(cls)


def wants_head(cfg: ModelConfig) -> bool:
    return bool(cfg.head_hidden) or cfg.head_pool is not None


def _input_shape(model: nn.Module, in_chans: int, img_size: Optional[int]) -> tuple[int, int, int]:
    if img_size is None:
        size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (in_chans, 224, 224))[1:])
    else:
        size = (img_size, img_size)
    return (in_chans, *size)


@torch.no_grad()
def _dry_run(model: nn.Module, shape: tuple, flatten: bool) -> tuple[int, list[str]]:
    """Features the head will receive (their count) and, for flatten, the parameterised modules that
    forward_features never calls."""
    called: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args: called.add(id(mod)))
             for m in model.modules() if m is not model]
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *shape, device=next(model.parameters()).device)
        feats = model.forward_features(x)
        if not flatten:
            feats = model.forward_head(feats, pre_logits=True)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    unused = []
    if flatten:
        for name, m in model.named_modules():
            if not name or id(m) in called or any(name.startswith(u + ".") for u in unused):
                continue
            if any(True for _ in m.parameters()) and not any(id(s) in called for s in m.modules()):
                unused.append(name)
    return feats[0].numel(), unused


def attach_dense_head(model: nn.Module, cfg: ModelConfig, num_classes: int, in_chans: int = 3,
                      img_size: Optional[int] = None, local: bool = False) -> nn.Module:
    """Replace the classifier of a built model by a DenseHead as `cfg` says (see the module docstring).
    The model is changed in place (its class becomes a subclass of its own) and returned."""
    for attr in ("reset_classifier", "forward_features", "forward_head", "get_classifier"):
        if not hasattr(model, attr):
            raise ConfigError(f"model.head_*: {type(model).__name__} has no {attr}(); a dense head needs timm's "
                              "classifier interface")
    pool, flatten = cfg.head_pool, cfg.head_pool == "flatten"
    if pool in TIMM_POOLS:
        if local:
            raise ConfigError(f"model.head_pool '{pool}' is timm's pooling; local model '{cfg.name}' pools "
                              "itself (leave head_pool unset, or 'flatten')")
        try:
            model.reset_classifier(0, global_pool=pool)
        except TypeError as e:
            raise ConfigError(f"model.head_pool: {type(model).__name__} takes no global_pool ({e})") from e
    else:
        model.reset_classifier(0)
    if any(True for _ in model.get_classifier().parameters()):
        raise ConfigError(f"model.head_*: {type(model).__name__}.reset_classifier(0) keeps classifier parameters")
    shape = _input_shape(model, in_chans, cfg.img_size or img_size)
    in_features, unused = _dry_run(model, shape, flatten)
    for name in unused:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    if unused:
        log.info("model.head_pool=flatten: %s unused by forward_features, removed", ", ".join(unused))
        if _dry_run(model, shape, flatten)[0] != in_features:
            raise ConfigError(f"model.head_pool=flatten: removing {', '.join(unused)} changed the features")
    setattr(model, UNUSED_ATTR, unused)
    model.__class__ = _headed_class(type(model))
    model._head_flatten, model._head_drop = flatten, float(cfg.drop_rate) if flatten else 0.0
    model.dense_head = DenseHead(in_features, cfg.head_hidden, num_classes, cfg.head_activation, cfg.head_dropout)
    model.num_classes = num_classes
    return model
