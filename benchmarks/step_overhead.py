#!/usr/bin/env python
"""Engine overhead: images/s of imgtrain's training loop against a bare PyTorch loop.

Same model, same in-memory batches, same threads, same optimizer; the engine runs its whole step
(accumulation bookkeeping, scheduler, logging, stop-signal agreement, progress) but reads its batches
from memory through `batch_source`, so only the loop's own cost is compared. Steady-state time per
step is taken between batch requests after a warm-up; bare and engine alternate, best of --repeats.

    python benchmarks/step_overhead.py [--steps 20] [--repeats 2]
The last line is `ratio: X.XX` (engine / bare, higher is better; target >= 0.95).
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imgtrain import config as C  # noqa: E402
from imgtrain import models  # noqa: E402
from imgtrain.engine import dist  # noqa: E402
from imgtrain.engine.trainer import run  # noqa: E402

CASES = [  # (label, model overrides, image size)
    ("vit_tiny@32", ["model.name=vit_tiny_patch16_224", "model.img_size=32", "model.patch_size=4"], 32),
    ("resnet18@64", ["model.name=resnet18"], 64),
]
WARMUP = 3


def make_batches(n, batch, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


def timed(source, stamps):
    for item in source:
        stamps.append(time.perf_counter())
        yield item


def steady_rate(stamps, batch):
    """Images/s between the first batch request after warm-up and the last one."""
    s = stamps[WARMUP:]
    return batch * (len(s) - 1) / (s[-1] - s[0])


def bare(cfg, batches):
    torch.manual_seed(0)
    model = models.create_model(cfg.model, num_classes=10, in_chans=3, img_size=cfg.data.img_size)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    stamps = []
    for x, y in timed(batches, stamps):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    stamps.append(time.perf_counter())
    return steady_rate(stamps, cfg.data.batch_size)


def engine(cfg, batches):
    stamps = []

    def source(epoch, plan):
        for x, y in timed(batches, stamps):
            yield {"image": x, "target": y, "index": torch.arange(len(x)), "bad": []}
        stamps.append(time.perf_counter())

    result = run(cfg, dist.DistEnv(), batch_source=source)
    assert result.status == "DONE", result
    return steady_rate(stamps, cfg.data.batch_size)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="measured steps per run (after %d warm-up)" % WARMUP)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="imgtrain-bench-"))
    try:
        return measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the digits shards and every run's checkpoints (~765 MB)


def measure(args, tmp: Path) -> int:
    data = tmp / "digits"  # the engine needs a real data set manifest; batches come from memory
    subprocess.run([sys.executable, "-m", "shards", "pack", "digits", "-", str(data)], check=True, cwd=ROOT,
                   capture_output=True)
    ratios = []
    for label, overrides, size in CASES:
        n = WARMUP + args.steps
        batches = make_batches(n, args.batch, size)
        best_bare = best_engine = 0.0
        for r in range(args.repeats):
            cfg = C.load(None, [f"data.path={data}", f"data.img_size={size}", f"data.batch_size={args.batch}",
                                "data.val_split=null", "data.test_split=null", "optim.name=adamw",
                                "trainer.epochs=1", f"trainer.max_steps={n}", f"output.root={tmp}",
                                f"output.run={label.replace('@', '-')}-{r}", "trainer.log_every_seconds=1e9",
                                *overrides])
            best_bare = max(best_bare, bare(cfg, batches))
            best_engine = max(best_engine, engine(cfg, batches))
        ratios.append(best_engine / best_bare)
        print(f"{label:12s} batch {args.batch}, {args.threads} threads: bare loop {best_bare:8.1f} img/s | "
              f"imgtrain engine {best_engine:8.1f} img/s | ratio {best_engine / best_bare:.3f}", flush=True)
    print(f"ratio: {min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
