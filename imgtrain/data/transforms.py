"""Image transforms and mixup/cutmix from timm, and where the normalisation comes from.

Loader workers hand over uint8 tensors (timm's prefetcher convention): a quarter of the bytes of float
batches through the worker queues, and normalisation (plus random erasing) runs once per batch on the
training device (`Normalizer`). The plain random-resized-crop + flip (no AutoAugment, colour jitter or
vertical flip) takes the decoded JPEG as an array and resizes with torch (`FastResizedCropFlip`): PIL's
crop, copy and resampling were most of a worker's time per ImageNet-sized photo.
"""
from __future__ import annotations

import math
import random
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
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


class FastResizedCropFlip:
    """timm's RandomResizedCropAndInterpolation + RandomHorizontalFlip + MaybePILToTensor, with the crop
    drawn the same way (python `random`, then `torch.rand` for the flip) but cut from a numpy array
    (`takes_array`: the loader decodes JPEGs straight into one) and resized by torch's antialiased uint8
    kernel, which matches PIL's resampling to within 2/255 at about half its cost."""

    takes_array = True

    def __init__(self, size: int, scale, ratio, interpolation: str, hflip: float):
        self.size, self.hflip, self.mode = size, hflip, interpolation
        self.scale, self.log_ratio = tuple(scale), (math.log(ratio[0]), math.log(ratio[1]))

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(top, left, h, w), as torchvision/timm's get_params draws it."""
        area = width * height
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*self.log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        ratio = width / height  # fallback: the central crop of the allowed aspect range
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if ratio < lo:
            w, h = width, int(round(width / lo))
        elif ratio > hi:
            h, w = height, int(round(height * hi))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img) -> torch.Tensor:
        """PIL image or HWC uint8 array -> CHW uint8 tensor laid out as HWC (collate stacks it as is)."""
        if isinstance(img, np.ndarray):
            top, left, h, w = self.box(img.shape[1], img.shape[0])
            crop = img[top:top + h, left:left + w]  # a view
        else:
            top, left, h, w = self.box(*img.size)
            crop = np.array(img.crop((left, top, left + w, top + h)))  # only the crop leaves PIL
        # NHWC memory seen as NCHW: torch's channels_last uint8 kernel, and a channels_last result
        nchw = torch.from_numpy(crop.reshape(1, h, w, -1)).permute(0, 3, 1, 2)
        out = F.interpolate(nchw, size=(self.size, self.size), mode=self.mode, antialias=True)[0]
        if self.hflip > 0 and torch.rand(1) < self.hflip:
            out = out.flip(-1)
        return out


def build_transform(cfg: DataConfig, train: bool, mean, std):
    """PIL image -> uint8 CHW tensor (augmented when `train`); see Normalizer for the rest."""
    transform = _build_transform(cfg, train, mean, std)
    if train and (cfg.rotate or cfg.shear):  # on the whole image, before it is cropped
        if cfg.rotate < 0 or cfg.shear < 0:
            raise ValueError(f"data.rotate ({cfg.rotate}) and data.shear ({cfg.shear}) are ranges in degrees, >= 0")
        affine = T.RandomAffine(degrees=cfg.rotate, shear=cfg.shear or None,
                                interpolation=T.InterpolationMode.BILINEAR)
        transform = T.Compose([affine, *transform.transforms])
    return transform


def _build_transform(cfg: DataConfig, train: bool, mean, std):
    if cfg.simple_augment:
        # the CIFAR recipe: pad-and-crop plus flip, which suits images already at the model's size
        steps = [T.Resize(cfg.img_size), T.CenterCrop(cfg.img_size)]
        if train:
            steps += [T.RandomCrop(cfg.img_size, padding=max(1, cfg.img_size // 8), padding_mode="reflect")]
            if cfg.hflip > 0:
                steps.append(T.RandomHorizontalFlip(cfg.hflip))
        steps.append(T.PILToTensor())
        if train and cfg.cutout > 0:
            steps.append(Cutout(cfg.cutout, mean))
        return T.Compose(steps)
    if train and cfg.plain_crop():
        return FastResizedCropFlip(cfg.img_size, cfg.scale, cfg.ratio, cfg.interpolation, cfg.hflip)
    kwargs = dict(input_size=(cfg.in_chans, cfg.img_size, cfg.img_size), is_training=train,
                  interpolation=cfg.interpolation, mean=mean, std=std, crop_pct=cfg.crop_pct, use_prefetcher=True)
    if train:
        kwargs.update(scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, vflip=cfg.vflip,
                      color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment)
    elif kwargs["interpolation"] == "random":
        kwargs["interpolation"] = "bicubic"
    if not train and cfg.crop_pct is None:
        # timm's default crop_pct (0.875) enlarges an image already at the model's size by 14 % and cuts its
        # border off, while training saw it whole (97.72 % vs 98.17 % test accuracy on 28 px digits):
        # images at or below the input size are evaluated whole; larger ones resize + centre-crop as timm does
        return WholeWhenSmall(cfg.img_size, create_transform(**{**kwargs, "crop_pct": 1.0}), create_transform(**kwargs))
    return create_transform(**kwargs)


def cutout_fill(mean) -> torch.Tensor:
    """The uint8 colour a cutout square gets: the normalisation mean, so it is 0 after normalising."""
    return torch.tensor([round(float(m) * 255) for m in mean], dtype=torch.uint8)


class Cutout:
    """Zero (to the mean colour) a size x size square of a uint8 CHW image, centred at a uniformly drawn pixel and
    clipped at the border (DeVries & Taylor 2017). The per-sample form of memory.batch_cutout."""

    def __init__(self, size: int, mean):
        self.size, self.fill = size, cutout_fill(mean)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        y0, x0 = max(0, cy - self.size // 2), max(0, cx - self.size // 2)
        y1, x1 = min(h, cy - self.size // 2 + self.size), min(w, cx - self.size // 2 + self.size)
        img = img.clone()
        img[:, y0:y1, x0:x1] = self.fill.view(-1, 1, 1)
        return img

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


class WholeWhenSmall:
    """Evaluation transform: `whole` (resize to the input size, crop_pct 1) for an image whose shorter side is
    at most `size`, `cropped` (timm's resize + centre crop) for a larger one."""

    def __init__(self, size: int, whole, cropped):
        self.size, self.whole, self.cropped = size, whole, cropped

    def __call__(self, img):
        return self.whole(img) if min(img.size) <= self.size else self.cropped(img)

    def __repr__(self) -> str:
        return f"WholeWhenSmall(size={self.size}, whole={self.whole!r}, cropped={self.cropped!r})"


def decode_size(cfg: DataConfig, train: bool) -> int:
    """The smallest image side the transform needs: what JPEG draft decoding may scale down to."""
    if train or cfg.simple_augment:
        return cfg.img_size
    return int(cfg.img_size / (cfg.crop_pct or 0.875)) + 1


class Normalizer:
    """uint8 batch on the device -> float, normalised; random erasing for training batches."""

    def __init__(self, mean, std, device, re_prob: float = 0.0):
        mean = torch.tensor(mean, device=device, dtype=torch.float64).view(1, -1, 1, 1) * 255  # 0..255 scale
        std = torch.tensor(std, device=device, dtype=torch.float64).view(1, -1, 1, 1) * 255
        self.scale, self.shift = (1 / std).float(), (-mean / std).float()
        self.erase = RandomErasing(re_prob, mode="pixel", device=str(device)) if re_prob > 0 else None
        self.row_affine = {}  # (image width, channels) -> (scale, shift) repeated along an NHWC row

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        # in place on the new float tensor: no temporaries (on a CPU this halved the time per batch)
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # channels_last: broadcasting over a last dimension of 3 does not vectorise; a whole row
            # (width x channels) against a repeated (scale, shift) does, 1.8x faster on a CPU
            n, c, h, w = x.shape
            if (w, c) not in self.row_affine:  # expand: one mean/std value for every channel is allowed
                self.row_affine[w, c] = (self.scale.view(-1).expand(c).repeat(w),
                                         self.shift.view(-1).expand(c).repeat(w))
            scale, shift = self.row_affine[w, c]
            rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)  # a view
            return rows.float().mul_(scale).add_(shift).view(n, h, w, c).permute(0, 3, 1, 2)
        return x.float().mul_(self.scale).add_(self.shift)

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = self._to_float(x)
        if train and self.erase is not None and len(x):
            x = self.erase(x)
        return x


def build_mixup(cfg: DataConfig, num_classes: int, label_smoothing: float) -> Optional[Mixup]:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 label_smoothing=label_smoothing, num_classes=num_classes)
