"""data.decode_on=device: training JPEGs decoded, cropped and resized on the training device.

For when the loader workers cannot keep up with the GPU. An estimate, not yet measured: a ViT-B/16 at
45 % MFU on an H100 trains on about 8,000 images/s, while a worker decodes and crops about 450 per core.
The workers then only read each JPEG's frame header and draw its random-resized-crop box and flip: the
same seeded draws as the CPU path, on the size the workers would decode at (JPEG draft), scaled to the
full-size image that the device decodes, so both paths crop the same region. The batch carries the
compressed bytes. The trainer decodes them with nvJPEG (`torchcodec.decoders.decode_jpeg`, batched in
chunks of CHUNK_PIXELS; libjpeg-turbo when the device is a CPU; torchvision's `io.decode_jpeg` where
the installed torch is too old for a torchcodec that decodes images), then crops, resizes with the same
antialiased filter and flips, one image at a time.
Files the device should not take are decoded by the workers as before and travel in the batch's decoded
part: PNG and the like, CMYK, truncated, 12-bit or arithmetic-coded JPEGs, files over PIL's pixel limit,
and files with an EXIF rotation (torchcodec would apply it; the loader, like PIL and timm, does not).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class JpegCrop:
    """A training sample left compressed: its bytes and the crop the transform drew for it."""
    data: bytes
    box: tuple[int, int, int, int]  # top, left, height, width in the full-size image
    flip: bool
    size: tuple[int, int]  # width, height of the full-size image


def pack(crops: list[JpegCrop]) -> dict:
    """One uint8 buffer for the batch's JPEGs (one shared-memory block through the worker queue, not one
    per image), their offsets, and rows of (top, left, height, width, flip, full width, full height)."""
    sizes = [len(c.data) for c in crops]
    offsets = torch.zeros(len(crops) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(sizes, dtype=torch.long), 0)
    data = torch.frombuffer(bytearray(b"".join(c.data for c in crops)), dtype=torch.uint8)
    boxes = torch.tensor([(*c.box, int(c.flip), *c.size) for c in crops], dtype=torch.long).view(-1, 7)
    return {"data": data, "offsets": offsets, "boxes": boxes}


def jpeg_decoder():
    """The batched JPEG decoder: torchcodec's `decode_jpeg` (torchcodec >= 0.14, with torch >= 2.12), else
    torchvision's `io.decode_jpeg` (also nvJPEG on a GPU, deprecated in torchcodec's favour but present in
    every torchvision a cluster's older torch pairs with, e.g. torch 2.11's torchvision 0.26). Both take a
    list of uint8 tensors, mode RGB and a device, and raise RuntimeError for a file they cannot decode."""
    try:
        from torchcodec.decoders import decode_jpeg
        return lambda raw, device: decode_jpeg(raw, mode="RGB", device=device)
    except (ImportError, OSError, RuntimeError):  # not installed, too old, or its libraries do not load
        pass
    try:
        from torchvision.io import ImageReadMode, decode_jpeg as tv_decode_jpeg
    except ImportError:
        return None
    return lambda raw, device: tv_decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)


def require_jpeg_decoder() -> None:
    """At start-up rather than at the first batch."""
    if jpeg_decoder() is None:
        raise ImportError("data.decode_on=device decodes JPEGs with torchcodec (or torchvision.io), neither of "
                          "which imports here; install requirements.txt or set data.decode_on=workers")


# full-size pixels decoded per nvJPEG call: the decoded images of a chunk are held until they are cropped
# (12-megapixel photos: 5 a call, 36 MB each; ImageNet-sized: the whole batch)
CHUNK_PIXELS = 64 * 2**20


def _chunks(sizes: list[tuple[int, int]]):
    """Index ranges of consecutive images whose full-size pixels fit CHUNK_PIXELS (at least one each)."""
    start, pixels = 0, 0
    for k, (w, h) in enumerate(sizes):
        if k > start and pixels + w * h > CHUNK_PIXELS:
            yield start, k
            start, pixels = k, 0
        pixels += w * h
    if start < len(sizes):
        yield start, len(sizes)


def _decode_all(raw: list[torch.Tensor], device: torch.device) -> list:
    """Batched decode; if any file breaks the batch, each on its own (the error for the broken ones)."""
    decode = jpeg_decoder()
    if device.type == "cuda":
        # nvJPEG writes its outputs before the work already queued on the caller's stream has run, into
        # blocks the caching allocator may just have recycled from tensors that work still reads: seen on
        # an H200 as a NaN loss once the trainer stopped syncing every step (torchvision 0.26; torchvision
        # PR 9606, torchcodec PR 1634). Until every decoder we may get waits itself, we wait here.
        torch.cuda.current_stream(device).synchronize()
    try:
        return decode(raw, device)
    except RuntimeError:
        out = []
        for one in raw:
            try:
                out.append(decode([one], device)[0])
            except RuntimeError as e:
                out.append(e)
        return out


def images_on_device(batch: dict, device: torch.device, size: int, interpolation: str, channels: int = 3):
    """(uint8 NCHW images, targets) on `device`: the workers' decoded images, then the deferred JPEGs.
    A JPEG that fails to decode is dropped with its target and named in batch["bad"]."""
    images = batch["image"].to(device, non_blocking=True)
    targets = batch["target"].to(device, non_blocking=True)
    if images.dim() != 4:  # no image decoded by the workers (all bad, or all deferred)
        images = torch.zeros((0, channels, size, size), dtype=torch.uint8, device=device)
    jpegs = batch.get("jpeg")
    if not jpegs or not len(jpegs["boxes"]):
        return images, targets
    offsets = jpegs["offsets"].tolist()
    raw = [jpegs["data"][a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    rows = jpegs["boxes"].tolist()
    n_decoded = len(targets) - len(raw)
    keep = torch.ones(len(targets), dtype=torch.bool)
    parts = [images]
    for lo, hi in _chunks([(r[5], r[6]) for r in rows]):
        for k, img in enumerate(_decode_all(raw[lo:hi], device), start=lo):
            if isinstance(img, Exception):
                keep[n_decoded + k] = False
                batch["bad"].append(f"train:{int(batch['index'][n_decoded + k])}: undecodable image on {device} "
                                    f"({img})")
                continue
            top, left, h, w, flip = rows[k][:5]
            crop = img[None, :, top:top + h, left:left + w].float()
            out = F.interpolate(crop, size=(size, size), mode=interpolation, antialias=True)
            if flip:
                out = out.flip(-1)
            parts.append(out.round_().clamp_(0, 255).to(torch.uint8))
    if not bool(keep.all()):
        targets = targets[keep.to(targets.device)]
    return torch.cat(parts), targets
