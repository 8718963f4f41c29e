"""Model registry: our own small nets first, then any timm architecture.

Nothing here downloads: timm models are always built with `pretrained=False`; weights come only from
`model.pretrained_path` through `load_pretrained`.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Callable, Optional

import timm
import torch.nn as nn

from imgtrain.config import ConfigError, ModelConfig

from . import heads
from . import small  # noqa: F401  (the local nets register themselves into the table on import)
from .local import _local, register_model  # noqa: F401  (register_model: part of this module's API)

# ModelConfig fields that only our local nets take; timm models get constructor arguments via model.kwargs.
LOCAL_FIELDS = ("depth", "width", "dim", "kernel_size", "activation", "variant")


def is_local(name: str) -> bool:
    return name in _local


def list_models(pattern: str = "*", include_timm: bool = True) -> list[str]:
    """Local model names matching `pattern` (fnmatch), followed by timm's when `include_timm`."""
    names = sorted(n for n in _local if fnmatch.fnmatch(n, pattern))
    if include_timm:
        names += [n for n in timm.list_models(pattern) if n not in _local]
    return names


def check_name(name: str) -> None:
    """Raise ConfigError (with close matches) unless `name` is a local or timm model; builds nothing."""
    if not (is_local(name) or timm.is_model(name)):
        raise _unknown_model(name)


def _unknown_model(name: str) -> ConfigError:
    candidates = list_models("*")
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    close += [c for c in candidates if name and name in c and c not in close][: 8 - len(close)]
    hint = f"; close matches: {', '.join(close)}" if close else "; see imgtrain.models.list_models()"
    return ConfigError(f"model.name: unknown model '{name}' (neither a local model nor a timm architecture){hint}")


def _create_local(cfg: ModelConfig, num_classes: int, in_chans: int, img_size: Optional[int]) -> nn.Module:
    fn = _local[cfg.name]
    sig = inspect.signature(fn).parameters
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans}
    if cfg.img_size or img_size:
        kwargs["img_size"] = cfg.img_size or img_size
    for key in LOCAL_FIELDS + ("patch_size", "drop_path_rate"):
        value = getattr(cfg, key)
        if value is None:
            continue
        if key not in sig:
            takes = ", ".join(k for k, p in sig.items()
                              if k not in ("num_classes", "in_chans", "img_size") and p.kind is not p.VAR_KEYWORD)
            raise ConfigError(f"model.{key} does not apply to local model '{cfg.name}' (it takes: {takes})")
        kwargs[key] = value
    if "drop_rate" in sig:
        kwargs["drop_rate"] = cfg.drop_rate
    elif cfg.drop_rate:
        raise ConfigError(f"model.drop_rate does not apply to local model '{cfg.name}'")
    kwargs.update(cfg.kwargs)
    try:
        return fn(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model '{cfg.name}' rejected its arguments ({e}); check model.* and model.kwargs") from e


def _create_timm(cfg: ModelConfig, num_classes: int, in_chans: int, img_size: Optional[int]) -> nn.Module:
    if not timm.is_model(cfg.name):
        raise _unknown_model(cfg.name)
    set_local = [k for k in LOCAL_FIELDS if getattr(cfg, k) is not None]
    if set_local:
        raise ConfigError(
            f"model.{set_local[0]} is for the local models ({', '.join(sorted(_local))}); "
            f"pass constructor arguments of timm model '{cfg.name}' in model.kwargs")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=cfg.drop_rate)
    optional = set()  # arguments we add on our own initiative; dropped if the constructor rejects them
    if not cfg.drop_rate:
        optional.add("drop_rate")
    if cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.patch_size is not None:
        kwargs["patch_size"] = cfg.patch_size
    if cfg.img_size is not None:
        kwargs["img_size"] = cfg.img_size
    elif img_size is not None:
        # The data size, so fixed-size models (ViT) match their input; CNNs that do not take it ignore it.
        kwargs["img_size"] = img_size
        optional.add("img_size")
    kwargs.update(cfg.kwargs)
    while True:
        try:
            return timm.create_model(cfg.name, pretrained=False, **kwargs)
        except TypeError as e:
            rejected = [k for k in optional if k in kwargs and f"'{k}'" in str(e)]
            if not rejected:
                raise ConfigError(
                    f"timm model '{cfg.name}' rejected its arguments "
                    f"{ {k: v for k, v in kwargs.items() if k not in ('num_classes', 'in_chans')} }: {e}") from e
            for k in rejected:
                kwargs.pop(k)


def create_model(cfg: ModelConfig, num_classes: int, in_chans: int = 3, img_size: Optional[int] = None) -> nn.Module:
    """Build `cfg.name` with a fresh `num_classes` head.

    `img_size` is the data's input size: local nets use it to size their layers; timm models get it only
    when their constructor takes it (ViT, MobileViT), or always when `model.img_size`/`model.patch_size`
    is set (then a model that rejects it is an error). `model.head_hidden`/`head_pool` replace the
    classifier by a dense head (heads.py), sized by one forward pass of a zero image at that size.
    """
    if ":" in cfg.name:
        raise ConfigError(f"model.name '{cfg.name}': hub names are not supported; nothing is downloaded, "
                          "use a timm architecture name and model.pretrained_path for weights")
    for forbidden in ("pretrained", "pretrained_cfg_overlay", "checkpoint_path"):
        if forbidden in cfg.kwargs:
            raise ConfigError(f"model.kwargs.{forbidden} is not allowed; weights come only from model.pretrained_path")
    local = is_local(cfg.name)
    model = (_create_local if local else _create_timm)(cfg, num_classes, in_chans, img_size)
    if heads.wants_head(cfg):
        heads.attach_dense_head(model, cfg, num_classes, in_chans, img_size, local=local)
    return model
