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


def _split(shards, *overrides, train=True):
    from imgtrain import config as C
    from imgtrain import tasks
    from imgtrain.data import build_split, dataset_info
    cfg = C.load(None, [f"data.path={shards}", "data.img_size=32", "data.interpolation=bilinear",
                        "data.val_split=null", "data.test_split=null", *overrides])
    info = dataset_info(cfg)
    return build_split(cfg, info, "train", tasks.build(cfg.task, info.num_outputs), train=train,
                       mean=(0.5,) * 3, std=(0.5,) * 3)


def test_device_decoding_gives_the_workers_crops_and_drops_what_it_cannot_decode(tmp_path):
    """data.decode_on=device: the workers defer JPEGs (not PNGs) and draw the same boxes and flips; the
    device's decode + crop + resize gives the CPU path's pixels to rounding; a broken file is reported."""
    import shards.cli
    from imgtrain.data import images_on_device
    from imgtrain.data.loader import collate
    from sourcedata import write_imagefolder

    src = write_imagefolder(tmp_path / "src", classes=("a", "b"), n_per_class=6, formats=("jpg", "jpg", "png"),
                            size=(72, 96))
    packed = tmp_path / "shards"
    assert shards.cli.main(["pack", "imagefolder", str(src), str(packed), "--val-fraction", "0"]) == 0
    # no DCT-scaled decoding, so that both paths draw their boxes on the full-size image
    on_cpu = _split(packed, "data.decode_on=workers", "data.jpeg_draft=false")
    on_device = _split(packed, "data.decode_on=device", "data.jpeg_draft=false")
    assert on_device.defer_jpegs and not on_cpu.defer_jpegs
    cpu_batch = collate([on_cpu[(0, i)] for i in range(len(on_cpu))])
    batch = collate([on_device[(0, i)] for i in range(len(on_device))])
    assert len(batch["jpeg"]["boxes"]) == 8 and len(batch["image"]) == 4  # the PNGs were decoded by workers
    images, targets = images_on_device(batch, torch.device("cpu"), 32, "bilinear")
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8 and not batch["bad"]
    order = {int(i): k for k, i in enumerate(cpu_batch["index"])}
    rows = [order[int(i)] for i in batch["index"]]
    assert torch.equal(targets, cpu_batch["target"][rows])
    diff = (images.float() - cpu_batch["image"][rows].float()).abs()
    assert diff.max() <= 2 and diff.mean() < 0.3  # float vs uint8 antialiasing kernels, of 255
    assert batch["jpeg"]["boxes"][:, 4].sum() not in (0, 8)  # flips drawn per sample, as on the CPU

    broken = dict(batch, bad=[], jpeg=dict(batch["jpeg"]))
    data = broken["jpeg"]["data"].clone()
    start = int(broken["jpeg"]["offsets"][1])
    data[start + 2:start + 40] = 0  # the second JPEG's headers, zeroed: its end marker stays
    broken["jpeg"]["data"] = data
    images2, targets2 = images_on_device(broken, torch.device("cpu"), 32, "bilinear")
    assert len(images2) == len(targets2) == 11 and len(broken["bad"]) == 1
    assert f"train:{int(batch['index'][5])}: undecodable image on cpu" in broken["bad"][0]
    assert torch.equal(images2, torch.cat([images[:5], images[6:]]))

    from imgtrain.config import ConfigError
    with pytest.raises(ConfigError, match=r"data.decode_on=device \[override 'data.decode_on=device'\].*simple_augment"):
        _split(packed, "data.decode_on=device", "data.simple_augment=true")  # when the config loads
    assert not _split(packed, "data.decode_on=device", train=False).defer_jpegs  # evaluation: the workers
