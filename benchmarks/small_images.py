#!/usr/bin/env python
"""Small images (issue 18): the engine with data.cache=memory against a bare in-memory PyTorch loop.

Both sides are whole processes, timed from start to exit (interpreter, imports, reading the data set, training,
the test evaluation), on the bundled digits upscaled to 28 px (`python -m shards pack digits - OUT --upscale 28`,
packed once, not timed). Same model (simple_cnn), optimizer (AdamW, constant lr), batch, epochs and training
samples; no augmentation on either side. The engine is `jobs/train.py`, one process, data.cache=memory, no
validation split, test at the end; it runs once with a cold cache (the decode into node-local scratch is timed)
and once warm. The bare loop reads the same shards into one tensor and trains on it.

    python benchmarks/small_images.py [--dataset digits|cifar10] [--epochs 2] [--batch 64] [--threads 1] [--work DIR]
Prints both times, both test accuracies, peak RSS; the last line is `ratio: X.XX` (bare / engine cold, higher is
better; issue 18's CPU target >= 0.85).
`--dataset cifar10 [--n 50000]`: the same on a CIFAR-10-format data set written in the real pickle format.
`--ddp`: also the engine as 2 DDP ranks on the warm cache, with the peak PSS of the process tree against the one
process's (issue 18's target <= 1.3x: the cache is one page-cache copy that every rank maps).
Peak PSS is sampled every 50 ms from /proc/PID/smaps_rollup over the process tree; peak RSS is the largest process's.
`--bare-order engine` (the default) makes the bare loop take the engine's sample order, so the two test accuracies
are equal unless the engine's data path changes the samples; `--bare-order randperm` shows a plain shuffle.
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


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (/proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _pss_mib(pid: int) -> float:
    """Proportional set size: a page shared by k processes counts 1/k in each (the memory-mapped cache, libraries),
    so the sum over a process tree is what the tree really holds."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_timed(cmd, env, log: Path) -> tuple[float, float, int, dict]:
    """(wall seconds, peak RSS MiB, exit status, {"tree": peak PSS of the process tree, "workers": peak PSS of its
    processes but the first (torchrun's ranks)}) of one whole process; RSS from os.wait4 (the largest process)."""
    import threading
    t = time.perf_counter()
    peaks = {"tree": 0.0, "workers": 0.0}
    with open(log, "w") as f:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.wait(0.05):
                pss = [_pss_mib(p) for p in _tree(proc.pid)]
                peaks["tree"] = max(peaks["tree"], sum(pss))
                peaks["workers"] = max(peaks["workers"], sum(pss[1:]))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t, usage.ru_maxrss / 1024, proc.returncode, peaks


def engine_config(data: Path, args, out: Path) -> str:
    return f"""name: small_images
data:
  path: {data}
  img_size: {args.size}
  in_chans: {args.in_chans}
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
  seed: {args.seed}
  log_every_steps: 100000
  log_every_seconds: 100000
output:
  root: {out}
"""


# ------------------------------------------------------------------------------------------ the bare loop

def write_cifar10(src: Path, n: int, seed: int = 0) -> Path:
    """A CIFAR-10-format data set in the real pickle format (data_batch_1..5, test_batch, batches.meta): n training
    and n // 5 test 32 px images, each class a coloured pattern under noise, so that a model can learn it."""
    import numpy as np
    from cifar_pickles import write_cifar10_pickles
    rng = np.random.default_rng(seed)
    protos = (128 + rng.integers(-12, 13, (10, 8, 8, 3))).repeat(4, 1).repeat(4, 2).astype(np.int16)  # 32x32x3
    per = -(-n // 5)
    batches = []
    for k in [per] * 5 + [max(10, n // 5)]:
        labels = rng.integers(0, 10, k)
        noise = rng.integers(-96, 97, (k, 32, 32, 3), dtype=np.int16)
        pixels = np.clip(protos[labels] + noise, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(k, 3072)
        batches.append((pixels, labels))
    return write_cifar10_pickles(src / "cifar-10-batches-py", batches, per)


def read_split(data: Path, split: str, in_chans: int = 1):
    """All (image, label) of a split from its shards, decoded with PIL into one uint8 tensor N x C x H x W."""
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
            ext = next(e for e in ("png", "jpg", "jpeg", "webp") if e in parts)
            img = np.array(Image.open(io.BytesIO(parts[ext])).convert("L" if in_chans == 1 else "RGB"))
            images.append(img.reshape(*img.shape[:2], -1))
            labels.append(int(parts["cls"]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), manifest["image_stats"]


def bare(args) -> None:
    import torch
    import torch.nn.functional as F
    from imgtrain import config as C
    from imgtrain import models
    from imgtrain.data.order import epoch_order
    torch.manual_seed(args.seed)
    data = Path(args.data)
    xtr, ytr, stats = read_split(data, "train", args.in_chans)
    xte, yte, _ = read_split(data, "test", args.in_chans)
    counts = [int(s["count"]) for s in json.loads((data / "manifest.json").read_text())["splits"]["train"]["shards"]]
    mean, std = stats["mean"], stats["std"]  # as the engine takes them from the manifest
    if len(mean) != args.in_chans:
        mean, std = [sum(mean) / len(mean)] * args.in_chans, [sum(std) / len(std)] * args.in_chans
    mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
    std = torch.tensor([max(v, 1e-3) for v in std]).view(1, -1, 1, 1) * 255
    model = models.create_model(C.ModelConfig(name="simple_cnn"), num_classes=10, in_chans=args.in_chans,
                                img_size=args.size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    n, b = len(xtr), args.batch
    for epoch in range(args.epochs):
        model.train()
        if args.bare_order == "engine":  # the shard path's order: shards permuted, then a 1,000-sample window shuffle
            perm = torch.from_numpy(epoch_order(counts, seed=args.seed, epoch=epoch, buffer=1000))
        else:
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
    p.add_argument("--bare-order", choices=("engine", "randperm"), default="engine",
                   help="the bare loop's sample order: the engine's (default; the accuracies then match exactly, "
                        "so any difference is a defect) or torch.randperm (the spread of a plain shuffle)")
    p.add_argument("--seed", type=int, default=0, help="trainer.seed of the engine, torch.manual_seed of the bare loop")
    p.add_argument("--size", type=int, default=None, help="image size (default: 28 for digits, 32 for cifar10)")
    p.add_argument("--dataset", choices=("digits", "cifar10"), default="digits",
                   help="digits: the bundled digits upscaled; cifar10: a CIFAR-10-format pickle data set of --n "
                        "32 px training images (class patterns under noise), packed with `shards pack cifar10`")
    p.add_argument("--n", type=int, default=50000, help="cifar10: training images (issue 18: 50,000)")
    p.add_argument("--in-chans", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for both processes (default: inherited; on a loaded machine 1 is steadier)")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--ddp", action="store_true",
                   help="also run the engine as 2 DDP ranks (torchrun, gloo) on the warm cache and compare peak PSS "
                        "(proportional set size, shared pages split) with the one-process run")
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = args.size or (28 if args.dataset == "digits" else 32)
    args.in_chans = args.in_chans or (1 if args.dataset == "digits" else 3)
    if args.bare:
        bare(args)
        return 0
    import tempfile
    work = args.work or Path(tempfile.mkdtemp(prefix="small_images-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.dataset == "digits":
        data = work / f"digits{args.size}"
        pack = [PY, "-m", "shards", "pack", "digits", "-", data, "--upscale", str(args.size)]
    else:
        data = work / f"cifar10-{args.n}"
        pack = [PY, "-m", "shards", "pack", "cifar10", write_cifar10(work / f"cifar10-{args.n}-src", args.n), data,
                "--val-fraction", "0", "--workers", str(os.cpu_count() or 1)]
    if not (data / "manifest.json").exists():
        subprocess.run([str(c) for c in pack], cwd=ROOT, check=True, capture_output=True)
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    env = dict(os.environ, TMPDIR=str(scratch), SLURM_TMPDIR="", PYTHONWARNINGS="ignore")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cfg = work / "engine.yaml"
    cfg.write_text(engine_config(data, args, work / "out"))
    shutil.rmtree(work / "out", ignore_errors=True)
    results = {}
    runs = [("cold", [PY]), ("warm", [PY])]
    if args.ddp:  # 2 ranks of half the batch each: the same global batch; the cache warm, shared by both ranks
        runs.append(("ddp", [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]))
    for name, launch in runs:
        extra = [f"data.batch_size={args.batch // 2}"] if name == "ddp" else []
        t, rss, rc, pss = run_timed([*launch, ROOT / "jobs/train.py", "--config", cfg, f"output.run=engine-{name}",
                                     *extra], env, work / f"engine-{name}.log")
        if rc != 0:
            print((work / f"engine-{name}.log").read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"engine run exited {rc}")
        test = json.loads((work / "out/runs" / f"engine-{name}" / "test_results.json").read_text())
        results[name] = (t, rss, test["metrics"]["acc1"], pss)
    t_bare, rss_bare, rc, pss_bare = run_timed(
        [PY, __file__, "--bare", "--data", data, "--epochs", args.epochs, "--batch", args.batch, "--lr", args.lr,
         "--seed", args.seed, "--bare-order", args.bare_order, "--size", args.size, "--in-chans", args.in_chans],
        env, work / "bare.log")
    if rc != 0:
        print((work / "bare.log").read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"bare loop exited {rc}")
    bare_out = json.loads((work / "bare.log").read_text().strip().splitlines()[-1])
    t_cold = results["cold"][0]
    print(f"{args.dataset} {args.size} px: {bare_out['train']} train / {bare_out['test']} test images, simple_cnn, AdamW "
          f"lr {args.lr}, batch {args.batch}, {args.epochs} epochs, seed {args.seed}, bare order {args.bare_order}, "
          f"OMP_NUM_THREADS {env.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    labels = {"cold": "engine, data.cache=memory, cold cache", "warm": "engine, data.cache=memory, warm cache",
              "ddp": "engine, 2 DDP ranks (torchrun), warm cache"}
    for name, (t, rss, acc, pss) in results.items():
        print(f"{labels[name]:<44} {t:6.2f} s  test acc1 {acc * 100:.2f} %  peak RSS {rss:.0f} MiB  "
              f"peak PSS {pss['tree']:.0f} MiB" + (f" (ranks {pss['workers']:.0f})" if name == "ddp" else ""))
    print(f"{'bare in-memory PyTorch loop':<44} {t_bare:6.2f} s  test acc1 {bare_out['acc1'] * 100:.2f} %  "
          f"peak RSS {rss_bare:.0f} MiB  peak PSS {pss_bare['tree']:.0f} MiB")
    if "ddp" in results:
        one, two = results["warm"][3]["tree"], results["ddp"][3]
        print(f"2-rank DDP / one process, peak PSS: ranks {two['workers'] / one:.2f}x, with the torchrun launcher "
              f"{two['tree'] / one:.2f}x (issue 18's target <= 1.3x)")
    print(f"ratio: {t_bare / t_cold:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
