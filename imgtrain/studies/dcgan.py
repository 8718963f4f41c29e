"""DCGAN (Radford, Metz & Chintala 2016) for MNIST/Fashion-MNIST-format grey images, run as a
resumable job that logs to the Parquet metrics schema (DESIGN §2-§4).

    from imgtrain.studies import dcgan
    images, labels = dcgan.load_mnist_dir("data/fashion-mnist")     # IDX files, .gz or plain
    G, D = dcgan.Generator(nz=100, img_size=28), dcgan.Discriminator(img_size=28)

Data: the raw IDX files of the MNIST format (`train-images-idx3-ubyte[.gz]`, optional
`train-labels-idx1-ubyte[.gz]`; `t10k-*` for --split test), parsed here with numpy, or any shard data
set (images decoded to grey). Images are resized (bilinear) to --img-size when their size differs,
scaled to [-1, 1], and held in memory (60,000 MNIST images at 28 px are 188 MB as float32).

Model (as in the paper and PyTorch's reference example, but for the discriminator's normalisation): the
generator maps z ~ N(0, I) through transposed convolutions with BatchNorm + ReLU to a tanh image; the
discriminator is strided convolutions with LeakyReLU(0.2), without BatchNorm by default; weights ~ N(0, 0.02),
BatchNorm scales ~ N(1, 0.02); Adam(lr 2e-4, betas (0.5, 0.999)) for both; binary cross-entropy with
the non-saturating generator loss. The discriminator outputs a logit and the loss is
BCEWithLogitsLoss, which is sigmoid + BCE computed stably. Spatial plan: 28 = 7 x 2^2, 32 = 4 x 2^3,
64 = 4 x 2^4 (any 4 x 2^k or 7 x 2^k works); channels halve per upsampling from ngf x 2^(k-1).
The discriminator sees a real batch and a fake batch separately, as in the reference. With BatchNorm in
it (--d-norm batch: the paper's choice, BatchNorm after each strided conv but the first), our CPU runs on
scikit-learn's digits (1,797 blurry 8x8 images enlarged to 28 px) collapsed the generator to one flat
image within ~200 steps (D wins: d_loss -> 0.07, sample diversity 0.004, seeds 0-3, ngf = ndf = 16 or 32),
while without it (--d-norm none, the default) the samples were diverse, digit-like and closer to the data
after ~300 steps in every seed (tests/test_bow_dcgan.py checks this for the default). Not checked on the
real MNIST/Fashion-MNIST files, which were not available offline.

Logged per optimizer step (split train, step = steps done, epoch 0-based): d_loss, g_loss, d_x (mean
D(x)), d_g_z1 (mean D(G(z)) before the D update), d_g_z2 (after it, in the G update). Per epoch:
epoch_d_loss, epoch_g_loss, epoch_d_x, epoch_d_g_z (means over the epoch), img_per_s, epoch_s.
Per epoch also samples/epoch-NNNN.png: G(fixed noise) in eval mode as a grid of ceil(sqrt(n)) columns,
and checkpoints/last.pt (G, D, both optimizers, fixed noise, RNG states, data position), written
atomically. samples/real.png shows real training images once.

Resume: the same command again continues from last.pt (the epoch order is a function of (seed, epoch)
and the noise RNG state is in the checkpoint, so on CPU an interrupted run ends with the same weights
as an uninterrupted one); a larger --epochs extends a DONE run. SIGUSR1/SIGTERM finish the current step,
write last.pt with the position inside the epoch and exit 75 (requeue me). A run killed between a
metrics flush and its checkpoint replays those steps under a higher attempt number; readers keep the
highest attempt (DESIGN §3), so nothing counts twice.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgtrain import runs
from imgtrain.logs import MetricWriter, atomic_write_bytes, resolve_root
from imgtrain.runs import REQUEUE_EXIT_CODE


class DataError(ValueError):
    """Missing or malformed input data, or bad arguments (exit status 2)."""


# =============================================================================== IDX files

# type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}


def parse_idx(raw: bytes, where: str = "<bytes>") -> np.ndarray:
    """An IDX byte string (gzip-compressed or not) as a native-endian array."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{where}: damaged gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{where}: not an IDX file (the magic number starts with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise DataError(f"{where}: unknown IDX data type 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{where}: IDX header with 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[code])
    count = math.prod(dims)
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(f"{where}: {len(raw) - header} data bytes, the header's shape {dims} needs "
                        f"{count * dtype.itemsize} (truncated or not this format)")
    arr = np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (`.gz` or plain: told apart by content, not by name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_idx(raw, str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store {array.dtype} (it stores {', '.join(sorted(map(str, _IDX_CODES)))})")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError("IDX stores arrays of 1 to 255 dimensions")
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array, IDX_TYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz (atomically)."""
    data = idx_bytes(array)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return atomic_write_bytes(path, data)


def find_idx(directory: str | os.PathLike, prefix: str, kind: str, ndim: int) -> Optional[Path]:
    """`<prefix>-<kind>-idx<ndim>-ubyte` (or `.idx<ndim>-ubyte`, as some copies name them), plain or .gz."""
    directory = Path(directory)
    for name in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
        for suffix in ("", ".gz"):
            if (directory / (name + suffix)).is_file():
                return directory / (name + suffix)
    return None


def load_mnist_dir(directory: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(images uint8 [N, H, W], labels [N] or None) from a folder of MNIST-format IDX files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"--mnist-dir {directory}: no such directory")
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"--split {split}: MNIST-format folders hold train and test (t10k) files")
    img_path = find_idx(directory, prefix, "images", 3)
    if img_path is None:
        raise DataError(f"--mnist-dir {directory}: no {prefix}-images-idx3-ubyte[.gz] in it")
    images = read_idx(img_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise DataError(f"{img_path}: no images")
    labels = None
    lab_path = find_idx(directory, prefix, "labels", 1)
    if lab_path is not None:
        labels = read_idx(lab_path)
        if labels.shape != (len(images),):
            raise DataError(f"{lab_path}: {labels.shape[0]} labels for {len(images)} images")
    return images, labels


def load_shard_images(directory: str | os.PathLike, split: str = "train",
                      max_images: Optional[int] = None) -> tuple[list[np.ndarray], list[str], str]:
    """(grey uint8 images in manifest order, skipped "key: reason" lines, data set name)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"--data {directory}: no such directory")
    from PIL import Image

    from imgtrain.data.tarindex import ShardReader, index_shard  # the package imports timm: not before here
    from shards.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(directory)
    except ManifestError as e:
        raise DataError(f"--data {directory}: not a shard data set ({e})") from None
    if split not in manifest["splits"]:
        raise DataError(f"{directory}/manifest.json has no split {split!r} (it has: {', '.join(manifest['splits'])})")
    shards = manifest["splits"][split]["shards"]
    reader = ShardReader([index_shard(directory / s["file"]) for s in shards])
    images, skipped = [], []
    try:
        for i, s in enumerate(shards):
            for pos in range(int(s["count"])):
                if max_images and len(images) >= max_images:
                    break
                got = reader.read(i, pos)
                if got is None:
                    skipped.append(f"{s['file']}#{pos}: missing from a damaged shard")
                    continue
                key, members = got
                ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in members), None)
                try:
                    if ext is None:
                        raise ValueError("no image member")
                    with Image.open(io.BytesIO(members[ext])) as im:
                        im.load()
                        images.append(np.asarray(im.convert("L")))
                except Exception as e:
                    skipped.append(f"{key} in {s['file']}: {type(e).__name__}: {e}")
    finally:
        reader.close()
    if not images:
        raise DataError(f"--data {directory}: no readable image in split {split}")
    return images, skipped, manifest["name"]


def to_tensor(images, img_size: int) -> torch.Tensor:
    """Grey uint8 images (an array [N, H, W] or a list of [H, W]) -> float [N, 1, S, S] in [-1, 1]."""
    from PIL import Image

    out = np.empty((len(images), img_size, img_size), np.uint8)
    for i, im in enumerate(images):
        if im.shape != (img_size, img_size):
            im = np.asarray(Image.fromarray(im).resize((img_size, img_size), Image.Resampling.BILINEAR))
        out[i] = im
    return torch.from_numpy(out).unsqueeze(1).float().div_(127.5).sub_(1.0)


# =============================================================================== models

def spatial_plan(img_size: int) -> tuple[int, int]:
    """(start size s0, upsamplings k) with img_size = s0 * 2**k, s0 in (4, 7), k >= 1."""
    for s0 in (4, 7):
        ratio = img_size / s0
        if ratio >= 2 and ratio == int(ratio) and (int(ratio) & (int(ratio) - 1)) == 0:
            return s0, int(ratio).bit_length() - 1
    raise DataError(f"--img-size {img_size}: must be 4 or 7 times a power of two (28, 32, 64, ...)")


class Generator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, img_size: int = 28, nc: int = 1):
        super().__init__()
        s0, k = spatial_plan(img_size)
        ch = ngf * 2 ** (k - 1)
        layers = [nn.ConvTranspose2d(nz, ch, s0, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.nz, 1, 1))


D_NORMS = ("batch", "none")


class Discriminator(nn.Module):
    """Outputs one logit per image. `norm="batch"` adds the paper's BatchNorm layers (see the module notes)."""

    def __init__(self, ndf: int = 64, img_size: int = 28, nc: int = 1, norm: str = "none", extra_conv: int = 0):
        super().__init__()
        if norm not in D_NORMS:
            raise DataError(f"--d-norm {norm}: choose from {', '.join(D_NORMS)}")
        if extra_conv < 0:
            raise DataError(f"--d-extra-conv {extra_conv}: a number of filters, 0 for none")
        s0, k = spatial_plan(img_size)
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        ch = ndf
        if extra_conv:  # S001's PyTorch port: one more 3x3 convolution (32 filters there), same resolution
            layers += [nn.Conv2d(ch, extra_conv, 3, 1, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
            ch = extra_conv
        for _ in range(k - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                       *([nn.BatchNorm2d(ch * 2)] if norm == "batch" else []), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, s0, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def init_weights(m: nn.Module) -> None:
    """The paper's initialisation: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def sample_grid_png(images: torch.Tensor) -> bytes:
    """[n, C, H, W] in [-1, 1] -> PNG bytes of a grid with ceil(sqrt(n)) columns and 2 px padding."""
    from torchvision.utils import save_image

    buf = io.BytesIO()
    save_image(images.detach().cpu(), buf, format="png", nrow=math.ceil(math.sqrt(len(images))), padding=2,
               normalize=True, value_range=(-1.0, 1.0))
    return buf.getvalue()


# =============================================================================== the job

@dataclass
class GanParams:
    data: Optional[str] = None  # shard data set
    mnist_dir: Optional[str] = None  # IDX files
    split: str = "train"
    max_images: Optional[int] = None
    epochs: int = 5
    batch_size: int = 64
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    d_norm: str = "none"
    d_extra_conv: int = 0
    lr: float = 2e-4
    beta1: float = 0.5
    img_size: int = 28
    n_samples: int = 64
    seed: int = 0
    device: str = "auto"
    root: Optional[str] = None
    run: Optional[str] = None


def config_of(p: GanParams, data_name: str, n_images: int) -> dict:
    source = "mnist_idx" if p.mnist_dir else "shards"
    return {
        "name": p.run or f"dcgan-{data_name}",
        "job": "dcgan",
        "data": {"source": source, "path": str(Path(p.mnist_dir or p.data).resolve()), "name": data_name,
                 "split": p.split, "max_images": p.max_images, "images": n_images, "img_size": p.img_size,
                 "batch_size": p.batch_size},
        "model": {"name": "dcgan", "nz": p.nz, "ngf": p.ngf, "ndf": p.ndf, "d_norm": p.d_norm, "nc": 1,
                  # only when set: earlier runs keep their config hash (and run id)
                  **({"d_extra_conv": p.d_extra_conv} if p.d_extra_conv else {})},
        "optim": {"name": "adam", "lr": p.lr, "betas": [p.beta1, 0.999]},
        "trainer": {"epochs": p.epochs, "seed": p.seed, "n_samples": p.n_samples,
                    "monitor": "train/epoch_g_loss"},
        "output": {"root": str(p.root), "run": p.run},
    }


def config_hash(cfg: dict) -> str:
    """What changes results: not paths, the run name or the number of epochs (so a run can be extended)."""
    kept = {k: v for k, v in cfg.items() if k not in ("output", "name")}
    kept["data"] = {k: v for k, v in cfg["data"].items() if k != "path"}
    kept["trainer"] = {k: v for k, v in cfg["trainer"].items() if k != "epochs"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def log(msg: str) -> None:
    print(f"[dcgan] {msg}", flush=True)


def load_data(p: GanParams) -> tuple[torch.Tensor, str, list[str]]:
    if bool(p.data) == bool(p.mnist_dir):
        raise DataError("give exactly one of --data SHARDS_DIR and --mnist-dir DIR")
    if p.mnist_dir:
        images, _ = load_mnist_dir(p.mnist_dir, p.split)
        if p.max_images:
            images = images[:p.max_images]
        name, skipped = Path(p.mnist_dir).resolve().name, []
    else:
        images, skipped, name = load_shard_images(p.data, p.split, p.max_images)
    return to_tensor(images, p.img_size), name, skipped


def gan_step(G: Generator, D: Discriminator, opt_g, opt_d, real: torch.Tensor, nz: int) -> dict[str, float]:
    """One DCGAN update: D on a real and a fake batch (BCE, targets 1 and 0), then G with the
    non-saturating loss (fake -> 1). Noise comes from torch's global RNG (its state is checkpointed)."""
    b, device = len(real), real.device
    ones, zeros = torch.ones(b, device=device), torch.zeros(b, device=device)
    fake = G(torch.randn(b, nz, device=device))
    out_real = D(real)
    out_fake = D(fake.detach())
    d_loss = F.binary_cross_entropy_with_logits(out_real, ones) + F.binary_cross_entropy_with_logits(out_fake, zeros)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    out_gen = D(fake)
    g_loss = F.binary_cross_entropy_with_logits(out_gen, ones)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "d_x": torch.sigmoid(out_real).mean().item(),
            "d_g_z1": torch.sigmoid(out_fake).mean().item(), "d_g_z2": torch.sigmoid(out_gen).mean().item()}


def train(p: GanParams) -> int:
    """Train (or resume, or extend) one run; returns the exit status."""
    from imgtrain.engine.checkpoint import LAST, Checkpointer, CheckpointError, rng_state, set_rng_state
    from imgtrain.engine.signals import StopRequest

    if p.epochs < 1 or p.batch_size < 1 or p.n_samples < 1:
        raise DataError("--epochs, --batch-size and --n-samples must be at least 1")
    spatial_plan(p.img_size)
    data, data_name, skipped = load_data(p)
    n = len(data)
    p.root = str(resolve_root(p.root))
    cfg = config_of(p, data_name, n)
    chash = config_hash(cfg)
    run_id = p.run or f"dcgan-{data_name}-{chash[:8]}"
    cfg["output"]["run"] = run_id
    rdir = runs.run_path(p.root, run_id)
    device = torch.device("cuda" if p.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if p.device == "auto" else p.device))

    torch.manual_seed(p.seed)
    G = Generator(p.nz, p.ngf, p.img_size).to(device)
    D = Discriminator(p.ndf, p.img_size, norm=p.d_norm, extra_conv=p.d_extra_conv).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    opt_g = torch.optim.Adam(G.parameters(), lr=p.lr, betas=(p.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=p.lr, betas=(p.beta1, 0.999))
    fixed_noise = torch.randn(p.n_samples, p.nz, generator=torch.Generator().manual_seed(p.seed + 1))
    ckpt = Checkpointer(rdir / "checkpoints")

    def check_model(state):
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])

    try:
        state = ckpt.load_resume(chash, check_model)
    except CheckpointError as e:  # another config's checkpoint, or none that loads
        raise DataError(str(e).replace("(or set output.run=NEW_ID)", "(or pass --run NEW_NAME)")) from None
    if state is not None and state["epoch"] >= p.epochs and runs.read_status(rdir) == runs.DONE:
        log(f"run {run_id} is already DONE ({state['epoch']} epochs, {rdir}); nothing to do")
        return 0
    runs.clear_markers(rdir)
    import yaml

    with runs.attempt(rdir, run_id=run_id, config_hash=chash,
                      config_yaml=yaml.safe_dump(cfg, sort_keys=False)) as attempt:
        writer = MetricWriter(rdir, run_id, None, attempt.number, flush_seconds=30.0)
        steps_per_epoch = max(1, n // p.batch_size)  # the remainder that does not fill a batch is dropped
        if state is None:
            epoch, batch, step, wall_s, images_seen = 0, 0, 0, 0.0, 0
            sums: dict[str, float] = {}
            history: list[float] = []
            atomic_write_bytes(rdir / "samples" / "real.png", sample_grid_png(data[:p.n_samples]))
        else:
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            fixed_noise = state["fixed_noise"]
            set_rng_state(state["rng"])
            epoch, batch, step = state["epoch"], state["batch"], state["step"]
            wall_s, images_seen = state["wall_s"], state["images"]
            sums, history = dict(state["sums"]), list(state["history"])
            log(f"resuming {run_id} at epoch {epoch + 1}, batch {batch}/{steps_per_epoch}, step {step} (attempt {attempt.number})")
        log(f"run {run_id} -> {rdir}")
        log(f"{n} images of {data_name} ({p.split}) at {p.img_size} px, batch {p.batch_size}, {steps_per_epoch} "
            f"steps/epoch, {p.epochs} epochs, device {device.type}"
            + (f"; {len(skipped)} unreadable images skipped" if skipped else ""))

        stop = StopRequest().install()
        t_attempt = time.perf_counter()

        def save(epoch_, batch_):
            writer.flush()  # metrics reach the disk before the checkpoint that covers them
            ckpt.save_last({"G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(),
                            "opt_d": opt_d.state_dict(), "epoch": epoch_, "batch": batch_, "step": step,
                            "fixed_noise": fixed_noise, "rng": rng_state(), "config_hash": chash,
                            "wall_s": wall_s + time.perf_counter() - t_attempt, "images": images_seen,
                            "sums": sums, "history": history})

        try:
            while epoch < p.epochs:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(p.seed * 1_000_003 + epoch))
                t_epoch, last_print = time.perf_counter(), time.perf_counter()
                G.train()
                D.train()
                while batch < steps_per_epoch:
                    real = data[order[batch * p.batch_size:(batch + 1) * p.batch_size]].to(device)
                    values = gan_step(G, D, opt_g, opt_d, real, p.nz)
                    step += 1
                    batch += 1
                    images_seen += len(real)
                    writer.log_many("train", values, epoch=epoch, step=step)
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    sums["n"] = sums.get("n", 0.0) + 1
                    sums["images"] = sums.get("images", 0.0) + len(real)
                    if time.perf_counter() - last_print > 30:
                        last_print = time.perf_counter()
                        log(f"epoch {epoch + 1}/{p.epochs} batch {batch}/{steps_per_epoch}: d_loss {values['d_loss']:.4f} "
                            f"g_loss {values['g_loss']:.4f}")
                    if stop:
                        sums["seconds"] = sums.get("seconds", 0.0) + time.perf_counter() - t_epoch
                        save(epoch, batch)
                        writer.close()
                        attempt.stopped(f"stopped by {stop.name}")
                        log(f"{stop.name}: stopped at epoch {epoch + 1} batch {batch}, step {step}; checkpoint "
                            f"written, exit {REQUEUE_EXIT_CODE} (requeue me)")
                        return REQUEUE_EXIT_CODE
                # end of the epoch: means, samples, checkpoint
                seconds = sums.get("seconds", 0.0) + time.perf_counter() - t_epoch
                k = max(sums.get("n", 0.0), 1.0)
                means = {"epoch_d_loss": sums.get("d_loss", 0.0) / k, "epoch_g_loss": sums.get("g_loss", 0.0) / k,
                         "epoch_d_x": sums.get("d_x", 0.0) / k, "epoch_d_g_z": sums.get("d_g_z1", 0.0) / k,
                         "img_per_s": sums.get("images", 0.0) / seconds if seconds > 0 else 0.0, "epoch_s": seconds}
                writer.log_many("train", means, epoch=epoch, step=step)
                history.append(means["epoch_g_loss"])
                G.eval()
                with torch.no_grad():
                    grid = sample_grid_png(G(fixed_noise.to(device)))
                png = rdir / "samples" / f"epoch-{epoch + 1:04d}.png"
                atomic_write_bytes(png, grid)
                epoch, batch, sums = epoch + 1, 0, {}
                save(epoch, 0)
                log(f"epoch {epoch}/{p.epochs} step {step}: d_loss {means['epoch_d_loss']:.4f} g_loss "
                    f"{means['epoch_g_loss']:.4f} D(x) {means['epoch_d_x']:.3f} D(G(z)) {means['epoch_d_g_z']:.3f} "
                    f"{means['img_per_s']:.0f} img/s -> {png.relative_to(rdir)}")
            writer.close()
            total_s = wall_s + time.perf_counter() - t_attempt
            best_epoch = int(np.argmin(history)) if history else 0
            attempt.done(runs.summary(
                run_id=run_id, sweep=None, monitor="train/epoch_g_loss",
                best=float(history[best_epoch]) if history else None, best_epoch=best_epoch, epochs=epoch,
                steps=step, wall_s=total_s, gpu_hours=total_s / 3600 if device.type == "cuda" else 0.0,
                img_per_s=images_seen / total_s if total_s > 0 else 0.0), config=cfg)
            log(f"done: {epoch} epochs, {step} steps in {total_s:.1f}s; samples in {rdir / 'samples'}, "
                f"checkpoint {rdir / 'checkpoints' / LAST}")
            return 0
        except BaseException:
            writer.close()  # its rows reach the parts before the attempt records the failure
            raise
        finally:
            stop.uninstall()


# =============================================================================== command line

EPILOG = """\
examples:
  python jobs/dcgan.py --mnist-dir data/fashion-mnist --epochs 25 --out runs_root
  python jobs/dcgan.py --mnist-dir data/mnist --img-size 64 --batch-size 128 --run dcgan-mnist64
  python jobs/dcgan.py --data demo/shards/digits --img-size 32 --epochs 20 --ngf 32 --ndf 32
  python jobs/dcgan.py --mnist-dir data/mnist --d-norm batch      # the paper's discriminator (BatchNorm)

--mnist-dir holds train-images-idx3-ubyte[.gz] (and optionally train-labels-idx1-ubyte[.gz]; --split test
reads t10k-*), as distributed for MNIST and Fashion-MNIST. --data takes any shard data set (grey).
Run directory ROOT/runs/<run>/ (default <run>: dcgan-<data set>-<config hash>): config.yaml, run.json,
metrics/*.parquet (per step: d_loss, g_loss, d_x, d_g_z1, d_g_z2; per epoch: epoch_d_loss, epoch_g_loss,
epoch_d_x, epoch_d_g_z, img_per_s, epoch_s), samples/epoch-NNNN.png (fixed noise), samples/real.png,
checkpoints/last.pt, summary.parquet, DONE. The same command again resumes from last.pt; a larger
--epochs extends a finished run.
Exit status: 0 done, 1 failed, 2 bad arguments or data, 75 stopped by SIGUSR1/SIGTERM after writing
last.pt (requeue me).
"""


def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="jobs/dcgan.py",
        description="Train a DCGAN (Radford et al.) on MNIST/Fashion-MNIST-format IDX files or a shard data set "
                    "(grey); losses to Parquet, a sample grid per epoch, atomic checkpoints, automatic resume.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="SHARDS_DIR", help="shard data set (holds manifest.json)")
    src.add_argument("--mnist-dir", metavar="DIR", help="folder of MNIST-format IDX files (.gz or plain)")
    p.add_argument("--split", default="train", help="split to train on (default train)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="use the first N images")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="batch size (default 64)")
    p.add_argument("--nz", type=int, default=100, help="noise dimension (default 100)")
    p.add_argument("--ngf", type=int, default=64, help="generator width: channels before the last layer (default 64)")
    p.add_argument("--ndf", type=int, default=64, help="discriminator width: channels of its first layer (default 64)")
    p.add_argument("--d-norm", choices=D_NORMS, default="none",
                   help="discriminator normalisation: none (default) or batch (BatchNorm after each strided conv but "
                        "the first, as in the paper; it collapsed the generator on digits, see imgtrain/studies/dcgan.py)")
    p.add_argument("--d-extra-conv", type=int, default=0, metavar="N",
                   help="one more 3x3 convolution of N filters after the discriminator's first (S001's PyTorch "
                        "port: 32); default 0, none")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate, both nets (default 2e-4)")
    p.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (default 0.5; beta2 is 0.999)")
    p.add_argument("--img-size", type=int, default=28, metavar="PX",
                   help="image size: 28, 32, 64 (any 4 or 7 times a power of two; default 28)")
    p.add_argument("--n-samples", type=int, default=64, metavar="N", help="images in each sample grid (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, noise and data order (default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", metavar="ROOT", default=None,
                   help="run root: the run lands in ROOT/runs/ (default $IMGTRAIN_ROOT or .)")
    p.add_argument("--run", metavar="NAME", default=None, help="run id (default dcgan-<data set>-<config hash>)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    params = GanParams(**{k: v for k, v in vars(args).items() if k not in ("out",)}, root=args.out)
    try:
        return train(params)
    except DataError as e:
        print(f"dcgan.py: error: {e}", file=sys.stderr)
        return 2


__all__ = ["D_NORMS", "DataError", "Discriminator", "GanParams", "Generator", "find_idx", "gan_step", "idx_bytes",
           "init_weights", "load_mnist_dir", "load_shard_images", "main", "parse_idx", "read_idx", "sample_grid_png",
           "spatial_plan", "to_tensor", "train", "write_idx"]
