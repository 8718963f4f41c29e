"""Image bytes from a shard -> pixels.

PIL decodes everything; a complete 1- or 3-channel JPEG bound for a transform that takes arrays
(`takes_array`, the fast random-resized-crop) is decoded by OpenCV straight into a numpy array instead.
Both use libjpeg-turbo with the same settings, so the pixels are the same (tested), and the array path
saves PIL's header parsing, its image object and the copy out of it: about a fifth of a loader worker's
time per ImageNet-sized photo.
"""
from __future__ import annotations

import io
import os
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image

# start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the image size
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_HUFFMAN_8BIT = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive: what nvJPEG decodes


class JpegFrame(NamedTuple):
    width: int
    height: int
    components: int
    marker: int  # which start-of-frame: the coding process
    precision: int  # bits per sample
    exif: bool  # an APP1 EXIF segment precedes the frame


def jpeg_frame(data: bytes) -> Optional[JpegFrame]:
    """The frame header of a JPEG; None if `data` does not start as a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n, exif = 2, len(data), False
    while i + 10 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker in _SOF:
            return JpegFrame(int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big"),
                             data[i + 9], marker, data[i + 4], exif)
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            i += 2
        else:
            exif = exif or (marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00")
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def draft_factor(width: int, height: int, draft: Optional[int]) -> int:
    """The DCT scale-down PIL's JpegImageFile.draft picks: the largest of 8, 4, 2 that keeps both sides
    >= `draft`, else 1 (also for an image already smaller than `draft`)."""
    fits = min(width // draft, height // draft) if draft else 0
    return next((f for f in (8, 4, 2) if fits >= f), 1)


_CV2_PID = None


def cv2_module():
    """OpenCV with one thread in each process that uses it: the loader workers are the parallelism."""
    global _CV2_PID
    import cv2
    if _CV2_PID != os.getpid():
        cv2.setNumThreads(1)
        _CV2_PID = os.getpid()
    return cv2


def plain_jpeg_frame(data: bytes) -> Optional[JpegFrame]:
    """jpeg_frame for a JPEG that decoders other than PIL may take; None for the rest: not a JPEG, CMYK
    (converted differently), no end-of-image marker (PIL reports a truncated file; OpenCV and nvJPEG
    would fill it in silently), or more pixels than PIL's decompression-bomb limit (PIL warns or refuses)."""
    frame = jpeg_frame(data)
    if frame is None or frame.components not in (1, 3) or not data.endswith(b"\xff\xd9"):
        return None
    if Image.MAX_IMAGE_PIXELS and frame.width * frame.height > Image.MAX_IMAGE_PIXELS:
        return None
    return frame


def device_jpeg_frame(data: bytes) -> Optional[JpegFrame]:
    """plain_jpeg_frame for a JPEG the device may decode: 8-bit Huffman-coded (what nvJPEG takes) and
    stored upright. torchcodec applies an EXIF orientation and cannot be told not to, while the loader
    (like PIL and timm) does not: a rotated file stays with the workers, so that every path crops the
    same stored pixels."""
    frame = plain_jpeg_frame(data)
    if frame is None or frame.marker not in _HUFFMAN_8BIT or frame.precision != 8:
        return None
    if frame.exif:
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads only the headers
                if im.getexif().get(0x0112, 1) != 1:  # 0x0112: orientation; 1 = as stored
                    return None
        except Exception:  # PIL raises many types; the workers' decoding will say what is wrong
            return None
    return frame


def _jpeg_to_array(data: bytes, draft: Optional[int]) -> Optional[np.ndarray]:
    """HWC uint8 RGB, or None where PIL should decode (see plain_jpeg_frame)."""
    frame = plain_jpeg_frame(data)
    if frame is None:
        return None
    try:
        cv2 = cv2_module()
    except ImportError:
        return None
    factor = draft_factor(frame.width, frame.height, draft)
    # EXIF orientation is ignored, as PIL ignores it
    flags = cv2.IMREAD_IGNORE_ORIENTATION
    flags |= cv2.IMREAD_COLOR_RGB if factor == 1 else {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                                                       8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None:
        return None
    if factor > 1:  # OpenCV has no reduced RGB mode
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels


def decode_image(data: bytes, mode: str, draft: Optional[int], as_array: bool):
    """`data` -> PIL image in `mode` (or, when `as_array` and it is an RGB JPEG, an HWC uint8 array).
    `draft`: the smallest side the transform needs; large JPEGs are decoded at a reduced DCT scale that
    still covers it. PIL's exceptions pass through for undecodable data."""
    if as_array and mode == "RGB":
        pixels = _jpeg_to_array(data, draft)
        if pixels is not None:
            return pixels
    with Image.open(io.BytesIO(data)) as im:
        if draft and im.format == "JPEG":  # libjpeg scales by 1/2..1/8 while decoding
            im.draft(mode, (draft, draft))
        im.load()
        return im if im.mode == mode else im.convert(mode)  # convert() copies even when equal
