"""The GPU benchmarks run on a GPU machine; here their --smoke modes prove every path that needs no CUDA,
and the fast CIFAR-10 recipe (model `airbench`) trains on tiny CIFAR-10 pickles."""
import json
import re
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
import yaml

from conftest import PY, ROOT, run_cmd
from imgtrain import config as C
from imgtrain import models
from imgtrain.logs import read_metrics
from sourcedata import write_cifar10

RATIO = re.compile(r"ratio: (\d+\.\d\d)")


def final_ratio(stdout: str) -> float:
    last = stdout.strip().splitlines()[-1]
    m = RATIO.fullmatch(last)
    assert m, f"last line is not 'ratio: X.XX': {last!r}\n{stdout[-3000:]}"
    return float(m.group(1))


@pytest.mark.slow
def test_gpu_throughput_smoke_measures_every_part(tmp_path):
    out = tmp_path / "figures.json"
    proc = run_cmd([PY, ROOT / "benchmarks/gpu_throughput.py", "--smoke", "--json", out, "--work", tmp_path / "w"],
                   timeout=300)
    r = json.loads(out.read_text())
    assert final_ratio(proc.stdout) == pytest.approx(min(r["eager"]["ratio"], r["compile"]["ratio"]), abs=0.006)
    assert r["flops_per_image"] > 1e6 and r["peak_matmul_tflops"] > 0
    for mode in ("eager", "compile"):
        assert r[mode]["bare_img_s"] > 0 and r[mode]["engine_img_s"] > 0 and r[mode]["engine_mfu"] > 0
    d = r["data"]
    assert d["loader_img_s"] > 0 and d["engine_from_shards_img_s"] > 0
    assert d["loader_decode_on_device_img_s"] > 0 and d["engine_decode_on_device_img_s"] > 0
    assert "the engine consumes" in proc.stdout and "data.decode_on=device: nvJPEG" in proc.stdout


@pytest.mark.multiproc
@pytest.mark.slow
def test_gpu_deepspeed_smoke_runs_single_ddp_and_zero2(tmp_path):
    out = tmp_path / "figures.json"
    proc = run_cmd([PY, ROOT / "benchmarks/gpu_deepspeed.py", "--smoke", "--json", out, "--work", tmp_path / "w"],
                   timeout=300)
    r = json.loads(out.read_text())["results"]
    assert set(r) == {"single", "ddp", "deepspeed"}
    assert all(v["img_s"] > 0 and v["peak_gib"] > 0 for v in r.values())
    assert final_ratio(proc.stdout) == pytest.approx(r["deepspeed"]["img_s"] / r["ddp"]["img_s"], abs=0.006)


@pytest.mark.slow
def test_cifar10_fast_recipe_trains_and_times_itself(tmp_path):
    src = write_cifar10(tmp_path / "src", n_per_batch=8, n_test=8)  # 40 train, 8 test images
    out = tmp_path / "figures.json"
    # target 0: the first epoch reaches it, so the time-to-accuracy path is taken
    proc = run_cmd([PY, ROOT / "benchmarks/gpu_throughput.py", "--cifar10-fast", src, "--smoke", "--target", "0",
                    "--json", out, "--work", tmp_path / "work"], timeout=300)
    r = json.loads(out.read_text())["cifar10_fast"]
    assert r["hit"]["epoch"] == 1 and r["hit"]["train_s"] > 0 and r["hit"]["wall_s"] >= r["hit"]["train_s"] - 1
    assert final_ratio(proc.stdout) > 0
    run_dir = Path(r["run_dir"])
    assert run_dir.parent.parent == tmp_path / "work"
    assert (run_dir / "DONE").exists()
    t = read_metrics(run_dir)
    val = t.filter(pc.equal(t["split"], "val"))
    assert "acc1" in val["metric"].to_pylist()
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["name"] == "airbench" and cfg["model"]["kwargs"] == {"tta": 2}
    assert cfg["optim"]["nesterov"] and cfg["task"]["label_smoothing"] == 0.2 and cfg["data"]["val_split"] == "test"


def test_cifar10_fast_config_loads():
    cfg = C.load(ROOT / "jobs/configs/cifar10_fast.yaml", ["data.path=/nonexistent"])
    assert (cfg.data.batch_size, cfg.optim.name, cfg.model.name) == (1024, "sgd", "airbench")


def test_airbench_whitens_from_its_first_training_batch_once():
    torch.manual_seed(0)
    model = models.create_model(C.ModelConfig(name="airbench", width=[8, 16, 16]), num_classes=10, img_size=32)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])  # correlated channels
    x = torch.einsum("ij,bjhw->bihw", mix, torch.randn(16, 3, 32, 32))
    model.train()
    assert not model.whitened
    model(x)
    assert model.whitened
    # the first half of the filters decorrelate 2x2 patches: unit covariance (up to eps)
    w = model.whiten.weight[: 12]
    z = torch.nn.functional.conv2d(x, w).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = z.T @ z / len(z)
    assert torch.allclose(cov, torch.eye(12), atol=0.02)
    assert not model.whiten.weight.requires_grad and not model.blocks[0].norm1.weight.requires_grad

    # a model restored from a checkpoint keeps its filters
    again = models.create_model(C.ModelConfig(name="airbench", width=[8, 16, 16]), num_classes=10, img_size=32)
    again.load_state_dict(model.state_dict())
    again.train()
    again(torch.randn(4, 3, 32, 32))
    assert torch.equal(again.whiten.weight, model.whiten.weight)

    # eval with TTA 2 averages 6 views: same shape, not the plain logits
    tta = models.create_model(C.ModelConfig(name="airbench", width=[8, 16, 16], kwargs={"tta": 2}), 10, img_size=32)
    tta.load_state_dict(model.state_dict())
    tta.eval()
    model.eval()
    with torch.no_grad():
        plain, averaged = model(x[:4]), tta(x[:4])
    assert averaged.shape == plain.shape == (4, 10) and not torch.allclose(averaged, plain)


def test_fast_crop_path_draws_timms_box_and_matches_its_pixels():
    """The loader's fast random-resized-crop (loader benchmark, issue 11) is timm's augmentation, cheaper."""
    import random

    import numpy as np
    from PIL import Image
    from timm.data.transforms import RandomResizedCropAndInterpolation

    from imgtrain.data.loader import Sample, collate
    from imgtrain.data.transforms import FastResizedCropFlip, build_transform
    from sourcedata import photos

    img = Image.fromarray(photos(1, size=(300, 400))[0])
    fast = FastResizedCropFlip(64, (0.08, 1.0), (3 / 4, 4 / 3), "bilinear", hflip=0.0)
    ref = RandomResizedCropAndInterpolation(64, interpolation="bilinear")
    for seed in range(6):
        random.seed(seed)
        box = ref.get_params(img, ref.scale, ref.ratio)
        random.seed(seed)
        assert fast.box(*img.size) == box
        random.seed(seed)
        ours = fast(img)
        random.seed(seed)
        theirs = torch.from_numpy(np.array(ref(img))).permute(2, 0, 1)
        assert ours.shape == theirs.shape == (3, 64, 64) and ours.dtype == torch.uint8
        diff = (ours.float() - theirs.float()).abs()
        assert diff.mean() < 0.1 and diff.max() <= 2  # torch's antialiased resize vs PIL's, of 255
    batch = collate([Sample(fast(img), torch.tensor(i), i) for i in range(3)])["image"]
    assert batch.shape == (3, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last)
    plain = C.DataConfig(path="x", img_size=64)
    assert isinstance(build_transform(plain, True, (0.5,) * 3, (0.5,) * 3), FastResizedCropFlip)
    augmented = C.DataConfig(path="x", img_size=64, auto_augment="rand-m9-mstd0.5")
    assert not isinstance(build_transform(augmented, True, (0.5,) * 3, (0.5,) * 3), FastResizedCropFlip)


@pytest.mark.slow
def test_small_images_benchmark_runs_both_sides(tmp_path):
    """benchmarks/small_images.py on 200 CIFAR-format images, one epoch: three whole processes (engine with a
    cold and a warm data.cache=memory, the bare loop), their figures, and the ratio line last."""
    proc = run_cmd([PY, ROOT / "benchmarks/small_images.py", "--dataset", "cifar10", "--n", "200", "--epochs", "1",
                    "--threads", "1", "--work", tmp_path], timeout=300)
    out = proc.stdout
    for side in ("cold cache", "warm cache", "bare in-memory PyTorch loop"):
        line = next(ln for ln in out.splitlines() if side in ln)
        assert re.search(r"\d+\.\d\d s\s+test acc1 \d+\.\d\d %\s+peak RSS \d+ MiB", line), line
    assert 0 < final_ratio(out) < 5
    assert list((tmp_path).rglob("imgtrain-cache/*/train-32-*.npy"))  # the engine decoded into the cache
