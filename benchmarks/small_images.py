#!/usr/bin/env python
"""Small images (issue 18): the engine with data.cache=memory against a bare in-memory PyTorch loop.

Both sides are whole processes, timed from start to exit (interpreter, imports, reading the data set, training,
the test evaluation), on the bundled digits upscaled to 28 px (`python -m shards pack digits - OUT --upscale 28`,
packed once, not timed). Same model (simple_cnn), optimizer (AdamW, constant lr), batch, epochs and training
samples; no augmentation on either side. The engine is `jobs/train.py`, one process, data.cache=memory, no
validation split, test at the end; it runs once with a cold cache (the decode into node-local scratch is timed)
and once warm. The bare loop reads the same shards into one tensor and trains on it.

    python benchmarks/small_images.py [--epochs 2] [--batch 64] [--work DIR]
Prints both times, both test accuracies, peak RSS; the last line is `ratio: X.XX` (bare / engine cold, higher is
better; issue 18's CPU target >= 0.85).
TODO (issue 18): the CIFAR-10-format data set of 50,000 32 px images; the 2-rank DDP peak-RSS comparison.
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run_timed(cmd, env, log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit status) of one whole process (os.wait4: this child's own rusage)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t, usage.ru_maxrss / 1024, proc.returncode


def engine_config(data: Path, args, out: Path) -> str:
    return f"""name: small_images
data:
  path: {data}
  img_size: {args.size}
  in_chans: 1
  batch_size: {args.batch}
  num_workers: 0
  val_split: null
  test_split: test
  simple_augment: false
  scale: [1.0, 1.0]
  ratio: [1.0, 1.0]
  hflip: 0.0
  interpolation: bilinear
  crop_pct: 1.0
  cache: memory
model:
  name: simple_cnn
optim:
  name: adamw
  lr: {args.lr}
  weight_decay: 0.0
sched:
  name: none
trainer:
  epochs: {args.epochs}
  seed: 0
  log_every_steps: 100000
  log_every_seconds: 100000
output:
  root: {out}
"""


# ------------------------------------------------------------------------------------------ the bare loop

def read_split(data: Path, split: str):
    """All (image, label) of a split from its shards, decoded with PIL into one uint8 tensor N x 1 x H x W."""
    import numpy as np
    import torch
    from PIL import Image
    manifest = json.loads((data / "manifest.json").read_text())
    images, labels = [], []
    for shard in manifest["splits"][split]["shards"]:
        members = {}
        with tarfile.open(data / shard["file"]) as tar:
            for m in tar:
                if m.isfile():
                    key, ext = m.name.split(".", 1)
                    members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, parts in members.items():
            images.append(np.array(Image.open(io.BytesIO(parts["png"])).convert("L")))
            labels.append(int(parts["cls"]))
    x = torch.from_numpy(np.stack(images))[:, None]
    return x, torch.tensor(labels), manifest["image_stats"]


def bare(args) -> None:
    import torch
    import torch.nn.functional as F
    from imgtrain import config as C
    from imgtrain import models
    torch.manual_seed(0)
    data = Path(args.data)
    xtr, ytr, stats = read_split(data, "train")
    xte, yte, _ = read_split(data, "test")
    mean, std = stats["mean"][0] * 255, max(stats["std"][0], 1e-3) * 255
    model = models.create_model(C.ModelConfig(name="simple_cnn"), num_classes=10, in_chans=1, img_size=args.size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    n, b = len(xtr), args.batch
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n - b + 1, b):
            idx = perm[i:i + b]
            x = (xtr[idx].float() - mean) / std
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model((xte[i:i + 512].float() - mean) / std).argmax(1) for i in range(0, len(xte), 512)])
    print(json.dumps({"acc1": float((pred == yte).float().mean()), "train": n, "test": len(xte)}))


# ------------------------------------------------------------------------------------------ side by side

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for both processes (default: inherited; on a loaded machine 1 is steadier)")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare:
        bare(args)
        return 0
    import tempfile
    work = args.work or Path(tempfile.mkdtemp(prefix="small_images-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"digits{args.size}"
    if not (data / "manifest.json").exists():
        subprocess.run([PY, "-m", "shards", "pack", "digits", "-", data, "--upscale", str(args.size)], cwd=ROOT,
                       check=True, capture_output=True)
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    env = dict(os.environ, TMPDIR=str(scratch), SLURM_TMPDIR="", PYTHONWARNINGS="ignore")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cfg = work / "engine.yaml"
    cfg.write_text(engine_config(data, args, work / "out"))
    shutil.rmtree(work / "out", ignore_errors=True)
    results = {}
    for name in ("cold", "warm"):
        t, rss, rc = run_timed([PY, ROOT / "jobs/train.py", "--config", cfg, f"output.run=engine-{name}"], env,
                               work / f"engine-{name}.log")
        if rc != 0:
            print((work / f"engine-{name}.log").read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"engine run exited {rc}")
        test = json.loads((work / "out/runs" / f"engine-{name}" / "test_results.json").read_text())
        results[name] = (t, rss, test["metrics"]["acc1"])
    t_bare, rss_bare, rc = run_timed([PY, __file__, "--bare", "--data", data, "--epochs", args.epochs, "--batch",
                                      args.batch, "--lr", args.lr, "--size", args.size], env, work / "bare.log")
    if rc != 0:
        print((work / "bare.log").read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"bare loop exited {rc}")
    bare_out = json.loads((work / "bare.log").read_text().strip().splitlines()[-1])
    t_cold, rss_cold, acc_engine = results["cold"]
    t_warm, rss_warm, acc_warm = results["warm"]
    print(f"digits {args.size} px: {bare_out['train']} train / {bare_out['test']} test images, simple_cnn, AdamW "
          f"lr {args.lr}, batch {args.batch}, {args.epochs} epochs, OMP_NUM_THREADS {env.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"engine (jobs/train.py, data.cache=memory, cold cache): {t_cold:6.2f} s  test acc1 {acc_engine * 100:.2f} %  "
          f"peak RSS {rss_cold:.0f} MiB")
    print(f"engine (jobs/train.py, data.cache=memory, warm cache): {t_warm:6.2f} s  test acc1 {acc_warm * 100:.2f} %  "
          f"peak RSS {rss_warm:.0f} MiB")
    print(f"bare in-memory PyTorch loop:                            {t_bare:6.2f} s  test acc1 "
          f"{bare_out['acc1'] * 100:.2f} %  peak RSS {rss_bare:.0f} MiB")
    print(f"ratio: {t_bare / t_cold:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
