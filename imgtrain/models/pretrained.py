"""Local weights into a built model, and the data settings that go with them.

Weights come only from a local file (`model.pretrained_path`); nothing is ever downloaded.
Accepted layouts: timm's own, and those timm converts with the filter function of the model's module
(torchvision VGG classifier keys, old torchvision DenseNet keys, ViT position embeddings and patch
embeddings resampled to the model's img_size/patch_size). torchvision ResNet and DenseNet keys equal
timm's; torchvision Inception v3 loads with its auxiliary head ignored. Other torchvision layouts (e.g.
MobileNetV2, EfficientNet) are not converted and fail with a key listing.
"""
from __future__ import annotations

import inspect
import logging
import os
import sys
from typing import Optional

import torch
import torch.nn as nn
from timm.data import resolve_model_data_config

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "module")
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
_FILTER_FNS = ("checkpoint_filter_fn", "_filter_fn", "_filter_torchvision_pretrained")
_IGNORED_PREFIXES = ("AuxLogits.",)  # torchvision inception_v3's training-only auxiliary head


class WeightsMismatchError(ValueError):
    """A weights file whose tensors do not fit the model (other than its classifier)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local .pth/.pt/.bin or .safetensors file, unwrapped and without wrapper prefixes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"model.pretrained_path: no such file '{path}'. Weights come only from model.pretrained_path, "
            "a local file (.pth/.pt or .safetensors); nothing is downloaded.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        obj = load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickled objects other than tensors and containers
            raise WeightsMismatchError(
                f"{path}: cannot be read as a weights file with torch.load(weights_only=True) ({e}); "
                "save only the model's state dict (torch.save(model.state_dict(), path))") from e
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise WeightsMismatchError(
                f"{path}: holds a dict without tensors at the top level nor a {'/'.join(_WRAPPER_KEYS)} key "
                f"(keys: {', '.join(map(str, list(obj)[:8]))})")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsMismatchError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for prefix in _STRIP_PREFIXES:
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def classifier_names(model: nn.Module) -> list[str]:
    """Module names of the classifier: the pretrained_cfg's `classifier` plus get_classifier()'s."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or []
    names = [names] if isinstance(names, str) else list(names)
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        names += [n for n, m in model.named_modules() if m is head and n and n not in names]
    return names


def _compare(sd: dict, model_sd: dict, heads: list[str], ignored: tuple = _IGNORED_PREFIXES) -> dict[str, list[str]]:
    def is_head(k):
        return any(k.startswith(h + ".") for h in heads)

    head_bad = [k for k in sd if is_head(k) and (k not in model_sd or sd[k].shape != model_sd[k].shape)]
    return dict(
        head_dropped=[k for k in sd if is_head(k)] if head_bad else [],
        missing=[k for k in model_sd if k not in sd and not is_head(k) and not k.endswith("num_batches_tracked")],
        unexpected=[k for k in sd if k not in model_sd and not is_head(k) and not k.startswith(ignored)],
        mismatched=[f"{k}: file {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
                    for k in sd if k in model_sd and not is_head(k) and sd[k].shape != model_sd[k].shape],
    )


def _filtered(sd: dict, model: nn.Module) -> Optional[dict]:
    """The state dict through timm's filter function for this model's module, if it has one and it applies."""
    module = sys.modules.get(type(model).__module__)
    for name in _FILTER_FNS:
        fn = getattr(module, name, None)
        if fn is None:
            continue
        try:
            two_args = len(inspect.signature(fn).parameters) >= 2
            return fn(dict(sd), model) if two_args else fn(dict(sd))
        except Exception as e:  # the filter does not understand this layout
            log.debug("%s.%s did not apply: %s", module.__name__, name, e)
    return None


def _summary(issues: dict[str, list[str]]) -> str:
    parts = []
    for kind in ("missing", "unexpected", "mismatched"):
        keys = issues[kind]
        if keys:
            more = f", ... {len(keys) - 4} more" if len(keys) > 4 else ""
            parts.append(f"{len(keys)} {kind} ({', '.join(keys[:4])}{more})")
    return "; ".join(parts)


def load_pretrained(model: nn.Module, path: str | os.PathLike, num_classes: Optional[int] = None) -> dict:
    """Load a local weights file into `model` in place.

    A classifier whose shape differs from the model's (another `num_classes`, or the backbone's own
    classifier under a dense head: `model.head_hidden`) is dropped and keeps its fresh initialisation;
    tensors of modules a `head_pool=flatten` head removed are ignored; any other missing, unexpected or mis-shaped tensor raises WeightsMismatchError
    naming the file and a few keys. BatchNorm `num_batches_tracked` counters may be absent.
    Returns {'loaded': [...], 'head_dropped': [...], 'ignored': [...]} key lists.
    """
    model_classes = getattr(model, "num_classes", None)
    if num_classes is not None and model_classes is not None and model_classes != num_classes:
        raise ValueError(f"load_pretrained: model has {model_classes} classes, expected {num_classes}")
    sd = read_state_dict(path)
    model_sd = model.state_dict()
    heads = classifier_names(model)
    # modules a dense head with head_pool=flatten removed (heads.py): the file may hold them (VGG's fc6/fc7)
    skip = _IGNORED_PREFIXES + tuple(n + "." for n in getattr(model, "imgtrain_unused", None) or ())
    issues = _compare(sd, model_sd, heads, skip)
    bad = any(issues[k] for k in ("missing", "unexpected", "mismatched"))
    if bad:
        alt = _filtered(sd, model)
        if alt is not None:
            alt_issues = _compare(alt, model_sd, heads, skip)
            if not any(alt_issues[k] for k in ("missing", "unexpected", "mismatched")):
                sd, issues, bad = alt, alt_issues, False
    if bad:
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        raise WeightsMismatchError(f"{os.fspath(path)}: weights do not fit model '{arch}': {_summary(issues)}")

    ignored = [k for k in sd if k.startswith(skip) and k not in model_sd]
    sd = {k: v for k, v in sd.items() if k not in issues["head_dropped"] and k not in ignored}
    model.load_state_dict(sd, strict=False)
    if issues["head_dropped"]:
        log.info("%s: classifier %s does not match %s classes; it is re-initialised",
                 os.fspath(path), ", ".join(issues["head_dropped"]), model_classes)
    elif heads and not any(k.startswith(h + ".") for k in sd for h in heads):
        log.info("%s: no classifier weights in the file; the head keeps its initialisation", os.fspath(path))
    if ignored:
        log.info("%s: ignored %d tensors of %s", os.fspath(path), len(ignored), "/".join(skip))
    log.info("loaded %d tensors from %s", len(sd), os.fspath(path))
    return dict(loaded=sorted(sd), head_dropped=issues["head_dropped"], ignored=ignored)


def _input_size(model: nn.Module, default: tuple) -> tuple:
    """(C, H, W) the model was built for: ViT-like models fix H, W in patch_embed; C from the first conv."""
    chans, size = default[0], tuple(default[1:])
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if first:
        try:
            chans = getattr(model.get_submodule(first), "in_channels", chans)
        except AttributeError:
            pass
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "strict_img_size", True) and getattr(pe, "img_size", None) is not None:
        size = tuple(pe.img_size)
    return (chans, *size)


def data_config(model: nn.Module, pretrained: bool) -> dict:
    """mean, std, input_size, interpolation, crop_pct for the data pipeline.

    mean/std are those the weights were trained with (timm's pretrained config: ImageNet statistics for
    most models, 0.5 for Inception/Xception) when `pretrained`, else None: a model trained from scratch
    has no preference and the pipeline uses the data set's statistics.
    """
    dc = resolve_model_data_config(model)
    return dict(
        mean=tuple(dc["mean"]) if pretrained else None,
        std=tuple(dc["std"]) if pretrained else None,
        input_size=_input_size(model, tuple(dc["input_size"])),
        interpolation=dc["interpolation"],
        crop_pct=dc["crop_pct"],
    )
