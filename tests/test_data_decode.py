"""The loader's JPEG decoding: OpenCV into arrays where it gives PIL's pixels, PIL everywhere else."""
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from imgtrain.data.decode import decode_image, device_jpeg_frame, draft_factor, jpeg_frame, plain_jpeg_frame
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
    frame = jpeg_frame(data)
    assert frame[:3] == (900, 700, 1 if kind == "grey" else 3) and frame.exif == (kind == "exif-rotated")
    assert frame.precision == 8 and frame.marker == (0xC2 if kind == "progressive" else 0xC0)
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


def test_only_upright_8_bit_huffman_jpegs_go_to_the_device_and_bombs_go_to_pil():
    """nvJPEG takes 8-bit Huffman JPEGs; torchcodec applies EXIF orientation (the loader does not), so a
    rotated file stays with the workers; a frame over PIL's pixel limit gets PIL's warning or refusal."""
    upright, rotated = Image.Exif(), Image.Exif()
    upright[0x0112], rotated[0x0112] = 1, 6
    assert device_jpeg_frame(_jpeg(PHOTO)) is not None
    assert device_jpeg_frame(_jpeg(PHOTO, exif=upright.tobytes())) is not None
    assert device_jpeg_frame(_jpeg(PHOTO, exif=rotated.tobytes())) is None
    assert plain_jpeg_frame(_jpeg(PHOTO, exif=rotated.tobytes())) is not None  # the workers' OpenCV: no rotation
    data = bytearray(_jpeg(PHOTO))
    sof = data.index(b"\xff\xc0")
    for offset, value in ((1, 0xC9), (4, 12)):  # arithmetic coding; 12-bit samples
        odd = bytearray(data)
        odd[sof + offset] = value
        assert plain_jpeg_frame(bytes(odd)) is not None and device_jpeg_frame(bytes(odd)) is None
    bomb = bytearray(data)
    bomb[sof + 5:sof + 9] = (30000).to_bytes(2, "big") * 2  # 30000 x 30000 declared
    assert jpeg_frame(bytes(bomb))[:2] == (30000, 30000) and plain_jpeg_frame(bytes(bomb)) is None
    with pytest.raises(Image.DecompressionBombError):  # what the PIL path then reports (a bad sample)
        decode_image(bytes(bomb), "RGB", 224, as_array=True)


def test_normalizer_channels_last_rows_equal_the_plain_path():
    from imgtrain.data import Normalizer
    x = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    for mean, std in (((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)), ((0.5,), (0.25,))):  # one value for all channels too
        norm = Normalizer(mean, std, torch.device("cpu"))
        plain = norm(x)
        rows = norm(x.contiguous(memory_format=torch.channels_last))
        assert rows.is_contiguous(memory_format=torch.channels_last) and torch.allclose(plain, rows, atol=1e-6)


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


def test_device_decoding_gives_the_workers_crops_and_drops_what_it_cannot_decode(tmp_path, monkeypatch):
    """data.decode_on=device: the workers defer upright JPEGs (not PNGs or rotated files) and draw the
    same boxes and flips; the device's decode + crop + resize gives the CPU path's pixels to rounding,
    in chunks or not; with draft decoding the crops cover the same regions; a broken file is reported."""
    import shards.cli
    from imgtrain.data import device_decode, images_on_device
    from imgtrain.data.loader import collate
    from sourcedata import write_imagefolder

    src = write_imagefolder(tmp_path / "src", classes=("a", "b"), n_per_class=6, formats=("jpg", "jpg", "png"),
                            size=(72, 96))
    rotated = Image.Exif()
    rotated[0x0112] = 6
    (src / "a" / "rotated.jpg").write_bytes(_jpeg(photos(1, size=(72, 96), seed=9)[0], exif=rotated.tobytes()))
    packed = tmp_path / "shards"
    assert shards.cli.main(["pack", "imagefolder", str(src), str(packed), "--val-fraction", "0"]) == 0

    def batches(*overrides):
        split = _split(packed, *overrides)
        return split, collate([split[(0, i)] for i in range(len(split))])

    # no DCT-scaled decoding first, so that both paths decode and crop the same full-size pixels
    on_cpu, cpu_batch = batches("data.decode_on=workers", "data.jpeg_draft=false")
    on_device, batch = batches("data.decode_on=device", "data.jpeg_draft=false")
    assert on_device.defer_jpegs and not on_cpu.defer_jpegs
    assert len(batch["jpeg"]["boxes"]) == 8 and len(batch["image"]) == 5  # PNGs and the rotated JPEG: workers
    full, targets = images_on_device(batch, torch.device("cpu"), 32, "bilinear")
    assert full.shape == (13, 3, 32, 32) and full.dtype == torch.uint8 and not batch["bad"]
    order = {int(i): k for k, i in enumerate(cpu_batch["index"])}
    rows = [order[int(i)] for i in batch["index"]]
    assert torch.equal(targets, cpu_batch["target"][rows])
    diff = (full.float() - cpu_batch["image"][rows].float()).abs()
    assert diff.max() <= 2 and diff.mean() < 0.3  # float vs uint8 antialiasing kernels, of 255
    assert batch["jpeg"]["boxes"][:, 4].sum() not in (0, 8)  # flips drawn per sample, as on the CPU
    monkeypatch.setattr(device_decode, "CHUNK_PIXELS", 2 * 72 * 96)  # two images per decoder call
    assert torch.equal(images_on_device(dict(batch, bad=[]), torch.device("cpu"), 32, "bilinear")[0], full)
    monkeypatch.undo()

    # draft decoding (the default): the workers decode these at half size; the device crops the same regions
    _, cpu_draft = batches("data.decode_on=workers")
    _, draft = batches("data.decode_on=device")
    assert (draft["jpeg"]["boxes"][:, :4] % 2 == 0).all()  # boxes drawn at half size, scaled by 2
    images, _ = images_on_device(draft, torch.device("cpu"), 32, "bilinear")
    diff = (images.float() - cpu_draft["image"][[order[int(i)] for i in draft["index"]]].float()).abs()
    print("draft: mean abs difference of deferred crops", float(diff[5:].mean()))
    assert diff[5:].mean() < 6 and diff[:5].max() == 0  # deferred: same region, other decoder; the rest equal

    broken = dict(batch, bad=[], jpeg=dict(batch["jpeg"]))
    data = broken["jpeg"]["data"].clone()
    start = int(broken["jpeg"]["offsets"][1])
    data[start + 2:start + 40] = 0  # the second JPEG's headers, zeroed: its end marker stays
    broken["jpeg"]["data"] = data
    images2, targets2 = images_on_device(broken, torch.device("cpu"), 32, "bilinear")
    assert len(images2) == len(targets2) == 12 and len(broken["bad"]) == 1
    assert f"train:{int(batch['index'][6])}: undecodable image on cpu" in broken["bad"][0]
    assert torch.equal(images2, torch.cat([full[:6], full[7:]]))
    all_bad = {"image": torch.zeros(0), "target": torch.zeros(0), "index": torch.zeros(0, dtype=torch.long),
               "bad": ["x"]}
    assert images_on_device(all_bad, torch.device("cpu"), 32, "bilinear")[0].shape == (0, 3, 32, 32)

    from imgtrain.config import ConfigError
    with pytest.raises(ConfigError, match=r"data.decode_on=device \[override 'data.decode_on=device'\].*simple_augment"):
        _split(packed, "data.decode_on=device", "data.simple_augment=true")  # when the config loads
    assert not _split(packed, "data.decode_on=device", train=False).defer_jpegs  # evaluation: the workers


def test_jpeg_decoder_falls_back_to_torchvision_with_the_same_pixels(monkeypatch):
    """torch < 2.12 has no torchcodec that decodes images (the lent H200's torch 2.11): torchvision's
    decode_jpeg takes over, with torchcodec's pixels (both libjpeg-turbo on a CPU), and a broken file
    still comes back as an error in its place."""
    import sys

    from imgtrain.data.device_decode import _decode_all, jpeg_decoder
    data = torch.frombuffer(bytearray(_jpeg(PHOTO)), dtype=torch.uint8)
    broken = torch.frombuffer(bytearray(b"\xff\xd8 not a jpeg"), dtype=torch.uint8)
    cpu = torch.device("cpu")
    with_torchcodec = _decode_all([data], cpu)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # what an import of a too-old one raises
    assert jpeg_decoder() is not None
    with_torchvision = _decode_all([data, broken], cpu)
    assert torch.equal(with_torchvision[0], with_torchcodec[0]) and with_torchvision[0].shape[0] == 3
    assert isinstance(with_torchvision[1], Exception)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    assert jpeg_decoder() is None
    from imgtrain.data.device_decode import require_jpeg_decoder
    with pytest.raises(ImportError, match="data.decode_on=workers"):
        require_jpeg_decoder()
