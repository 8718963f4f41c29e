"""The loader's JPEG decoding: OpenCV into arrays where it gives PIL's pixels, PIL everywhere else."""
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from imgtrain.data.decode import decode_image, draft_factor, jpeg_frame
from imgtrain.data.transforms import FastResizedCropFlip
from sourcedata import photos


def _jpeg(pixels: np.ndarray, mode: str = "RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def _pil(data: bytes, mode: str, draft):
    with Image.open(io.BytesIO(data)) as im:
        if draft:
            im.draft(mode, (draft, draft))
        return np.asarray(im.convert(mode))


PHOTO = photos(1, size=(700, 900))[0]


@pytest.mark.parametrize("draft, factor", [(None, 1), (1000, 1), (500, 1), (224, 2), (100, 4), (80, 8)])
@pytest.mark.parametrize("kind", ["rgb", "grey", "progressive", "exif-rotated"])
def test_array_decoding_gives_pils_pixels_at_pils_draft_scale(kind, draft, factor):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": PIL does not apply it, so neither may we
    data = {"rgb": lambda: _jpeg(PHOTO), "grey": lambda: _jpeg(PHOTO, "L"),
            "progressive": lambda: _jpeg(PHOTO, progressive=True),
            "exif-rotated": lambda: _jpeg(PHOTO, exif=exif.tobytes())}[kind]()
    assert jpeg_frame(data) == (900, 700, 1 if kind == "grey" else 3)
    assert draft_factor(900, 700, draft) == factor
    ours = decode_image(data, "RGB", draft, as_array=True)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.uint8
    expected = _pil(data, "RGB", draft)
    assert ours.shape == expected.shape == (-(-700 // factor), -(-900 // factor), 3)
    assert np.array_equal(ours, expected)


def test_pil_decodes_what_the_array_path_must_not_and_errors_pass_through():
    rgb = _jpeg(PHOTO)
    cmyk = _jpeg(PHOTO, "CMYK")  # OpenCV converts CMYK to RGB differently
    png = io.BytesIO()
    Image.fromarray(PHOTO).save(png, "PNG")
    for data, mode in ((cmyk, "RGB"), (png.getvalue(), "RGB"), (rgb, "L")):
        img = decode_image(data, mode, 224, as_array=True)
        assert isinstance(img, Image.Image) and img.mode == mode
        assert np.array_equal(np.asarray(img), _pil(data, mode, 224 if data[:2] == b"\xff\xd8" else None))
    assert isinstance(decode_image(rgb, "RGB", None, as_array=False), Image.Image)
    # no end-of-image marker: OpenCV would grey-fill it; PIL raises, and the loader reports the sample
    with pytest.raises(OSError, match="truncated"):
        decode_image(rgb[: len(rgb) // 2], "RGB", None, as_array=True)
    with pytest.raises(Image.UnidentifiedImageError):
        decode_image(b"not an image at all", "RGB", None, as_array=True)
    assert jpeg_frame(b"\xff\xd8\xff\xe0\x00") is None and jpeg_frame(png.getvalue()) is None


def test_crop_from_an_array_equals_the_crop_from_the_pil_image():
    data = _jpeg(PHOTO)
    fast = FastResizedCropFlip(64, (0.08, 1.0), (3 / 4, 4 / 3), "bicubic", hflip=0.5)
    for seed in range(4):
        random.seed(seed)
        torch.manual_seed(seed)
        from_array = fast(decode_image(data, "RGB", 64, as_array=True))
        random.seed(seed)
        torch.manual_seed(seed)
        from_pil = fast(decode_image(data, "RGB", 64, as_array=False))
        assert from_array.shape == (3, 64, 64) and torch.equal(from_array, from_pil)
