"""Image transforms and mixup/cutmix from timm, and where the normalisation comes from.

Loader workers hand over uint8 tensors (timm's prefetcher convention): a quarter of the bytes of float
batches through the worker queues, and normalisation (plus random erasing) runs once per batch on the
training device (`Normalizer`).
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.data import Mixup, create_transform
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from imgtrain.config import DataConfig


def resolve_norm(cfg: DataConfig, model_data_cfg: Optional[dict], manifest: dict, pretrained: bool):
    """mean/std: the config's, else the pretrained model's (ImageNet), else the data set's own."""
    if cfg.mean is not None or cfg.std is not None:
        if cfg.mean is None or cfg.std is None:
            raise ValueError("data.mean and data.std must be set together")
        return tuple(cfg.mean), tuple(cfg.std)
    if pretrained and model_data_cfg:
        return tuple(model_data_cfg["mean"]), tuple(model_data_cfg["std"])
    stats = manifest.get("image_stats") or {}
    mean, std = stats.get("mean"), stats.get("std")
    if not mean or not std:
        return (0.5,) * cfg.in_chans, (0.5,) * cfg.in_chans
    if len(mean) != cfg.in_chans:  # grey data set fed to a 3-channel model
        mean, std = [sum(mean) / len(mean)] * cfg.in_chans, [sum(std) / len(std)] * cfg.in_chans
    return tuple(mean), tuple(max(s, 1e-3) for s in std)


def build_transform(cfg: DataConfig, train: bool, mean, std):
    """PIL image -> uint8 CHW tensor (augmented when `train`); see Normalizer for the rest."""
    if cfg.simple_augment:
        # the CIFAR recipe: pad-and-crop plus flip, which suits images already at the model's size
        steps = [T.Resize(cfg.img_size), T.CenterCrop(cfg.img_size)]
        if train:
            steps += [T.RandomCrop(cfg.img_size, padding=max(1, cfg.img_size // 8), padding_mode="reflect")]
            if cfg.hflip > 0:
                steps.append(T.RandomHorizontalFlip(cfg.hflip))
        return T.Compose(steps + [T.PILToTensor()])
    kwargs = dict(input_size=(cfg.in_chans, cfg.img_size, cfg.img_size), is_training=train,
                  interpolation=cfg.interpolation, mean=mean, std=std, crop_pct=cfg.crop_pct, use_prefetcher=True)
    if train:
        kwargs.update(scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, vflip=cfg.vflip,
                      color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment)
    elif kwargs["interpolation"] == "random":
        kwargs["interpolation"] = "bicubic"
    return create_transform(**kwargs)


def decode_size(cfg: DataConfig, train: bool) -> int:
    """The smallest image side the transform needs: what JPEG draft decoding may scale down to."""
    if train or cfg.simple_augment:
        return cfg.img_size
    return int(cfg.img_size / (cfg.crop_pct or 0.875)) + 1


class Normalizer:
    """uint8 batch on the device -> float, normalised; random erasing for training batches."""

    def __init__(self, mean, std, device, re_prob: float = 0.0):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.erase = RandomErasing(re_prob, mode="pixel", device=str(device)) if re_prob > 0 else None

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = (x.float() - self.mean) / self.std
        if train and self.erase is not None and len(x):
            x = self.erase(x)
        return x


def build_mixup(cfg: DataConfig, num_classes: int, label_smoothing: float) -> Optional[Mixup]:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 label_smoothing=label_smoothing, num_classes=num_classes)
