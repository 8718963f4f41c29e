#!/usr/bin/env python
"""DeepSpeed on one GPU (issue 9): vit_base_patch16_224 at 224, bf16, ZeRO-2 through the engine
(dist.strategy=deepspeed dist.zero_stage=2), 100 steps, against the same engine single-process and under
DDP (a world-size-1 process group), on the same GPU in the same run.

Each variant runs in its own process, so torch.cuda.max_memory_allocated is that variant's peak alone.
All three train the same uint8 batches from memory through `Trainer` with `batch_source` (AdamW,
images/s over the steps after --warmup). Single and DDP use bf16 autocast over fp32 weights; DeepSpeed
keeps bf16 weights and fp32 optimizer state, partitioned (ZeRO-2: gradients and optimizer state), and
initialises its process group as the engine does for one process without torchrun.

    python benchmarks/gpu_deepspeed.py                  # H100/H200 (about 2 min; needs deepspeed installed)
    python benchmarks/gpu_deepspeed.py --batch 256 --steps 100
    python benchmarks/gpu_deepspeed.py --smoke          # CPU, tiny ViT, gloo: every path but CUDA's
The last line is `ratio: X.XX` = ZeRO-2 / DDP images/s (higher is better).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


import torch  # noqa: E402

from gpu_throughput import (ROOT, Setup, engine_rate, machine, make_batches, peak_gib,  # noqa: E402
                            synthetic_manifest)

VARIANTS = {  # name -> engine overrides
    "single": [],
    "ddp": ["dist.strategy=ddp"],
    "deepspeed": ["dist.strategy=deepspeed", "dist.zero_stage=2"],
}


def setup(args) -> Setup:
    dev = torch.device("cpu") if args.smoke else torch.device("cuda", 0)
    if args.smoke:
        return Setup(dev, model="vit_tiny_patch16_224", img=32, model_kw={"img_size": 32, "patch_size": 4, "depth": 2},
                     batch=4, warmup=1, steps=args.steps, precision="fp32")
    return Setup(dev, batch=args.batch, warmup=args.warmup, steps=args.steps)


def child(args) -> int:
    """The variants named in --child (comma-separated), one after another in this process; prints a
    `RESULT {json}` line for each."""
    s = setup(args)
    if s.device.type == "cuda":
        torch.cuda.set_device(s.device)
    else:
        torch.set_num_threads(1)  # a small shared CPU: more threads only spin
    from imgtrain.engine import dist
    for name in args.child.split(","):
        env = dist.DistEnv(device=s.device)
        if name == "ddp":  # a real process group of one: the engine wraps the model in DDP
            import torch.distributed as tdist
            from gpu_throughput import free_port
            backend = "nccl" if s.device.type == "cuda" else "gloo"
            if not tdist.is_initialized():
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                                  LOCAL_RANK="0")
                tdist.init_process_group(backend, rank=0, world_size=1)
            env = dist.DistEnv(0, 1, 0, s.device, backend)
        rate = engine_rate(s, args.data, args.out, name, make_batches(s), VARIANTS[name], env=env)
        peak = peak_gib(s.device) if s.device.type == "cuda" else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: peak RSS of the process, GiB
        print("RESULT " + json.dumps({"variant": name, "img_s": rate, "peak_gib": peak,
                                      "memory": "max_memory_allocated" if s.device.type == "cuda" else "peak RSS"}),
              flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="per step (default 128)")
    p.add_argument("--steps", type=int, default=100, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--work", type=Path, help="scratch directory for data and runs (default: a new temp dir)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, 2 steps: checks the code paths")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke and args.steps == 100:
        args.steps = 2
    if args.child:
        return child(args)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on a CPU machine", file=sys.stderr)
        return 2
    s = setup(args)
    info = machine(s.device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    tmp = args.work or Path(tempfile.mkdtemp(prefix="imgtrain-ds-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = synthetic_manifest(tmp / "manifest", s.batch * (s.warmup + s.steps + 2), min(os.cpu_count(), 16))
    print(f"{s.model} @{s.img}, {s.precision}, AdamW, batch {s.batch}, {s.steps} timed steps after {s.warmup}; "
          f"{'all variants in one process (smoke)' if args.smoke else 'each variant in its own process'}", flush=True)
    results = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))

    # On a GPU each variant gets a process (and the card) to itself; --smoke runs all three in one child
    # process: on a CPU only the code paths count, and each process start costs seconds of imports.
    for names in [",".join(VARIANTS)] if args.smoke else list(VARIANTS):
        cmd = [sys.executable, __file__, "--child", names, "--data", str(data), "--out", str(tmp),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd + (["--smoke"] if args.smoke else []), cwd=ROOT, env=env, text=True,
                              capture_output=True)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                r = json.loads(line[len("RESULT "):])
                results[r["variant"]] = r
                print(f"{r['variant']:10s} {r['img_s']:9.1f} img/s   peak {r['peak_gib']:6.2f} GiB ({r['memory']})",
                      flush=True)
        if proc.returncode != 0:
            print(f"{names} FAILED (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", flush=True)
    if "ddp" not in results or "deepspeed" not in results:
        print("ratio: unavailable (a variant failed)")
        return 1
    ds, ddp = results["deepspeed"], results["ddp"]
    print(f"ZeRO-2 / DDP: images/s {ds['img_s'] / ddp['img_s']:.3f}, peak memory {ds['peak_gib'] / ddp['peak_gib']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "batch": s.batch, "steps": s.steps, "results": results},
                                        indent=1))
    print(f"ratio: {ds['img_s'] / ddp['img_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
