#!/usr/bin/env python
"""GPU proof (issue 16): every GPU path of the engine on one CUDA card, one PASS/FAIL line per check, every
figure as JSON in OUTDIR. Cheapest first, so a failure or a time limit late in the run still leaves figures.

  1. precision   the digits demo config on cuda, 2 epochs, in fp32, bf16 and fp16 (grad scaler): test acc1
                 against the CPU figure (fp32, one process, same config: --cpu-acc1)
  2. resume      trainer.deterministic=true, bf16: SIGUSR1 mid-epoch -> last.pt -> exit 75 -> resume -> DONE;
                 final weights against an uninterrupted run (bit-identical, or the max abs difference)
  3. compile     trainer.compile=true + trainer.channels_last=true (bf16), 2 epochs
  4. deepspeed   dist.strategy=deepspeed ZeRO-2 and ZeRO-3, one GPU, bf16, a 4-block ViT at 32 px on the digits,
                 312 steps; SIGUSR1 at step 150, resume to DONE; against an uninterrupted run, and test acc1
                 against the same ViT trained without DeepSpeed
  5. benchmarks/gpu_deepspeed.py   (single vs DDP vs ZeRO-2 images/s and peak memory, ViT-B/16)
  6. benchmarks/gpu_throughput.py  (ViT-B/16 at 224, bf16: engine vs bare loop eager/compiled, MFU; loader feed)
Checks 1-4 only test correctness and run side by side on the card; 5 and 6 are timed and run alone.

    python benchmarks/gpu_check.py OUTDIR                  # on the GPU machine (about 7 minutes)
    python benchmarks/gpu_check.py OUTDIR --budget 300     # stop starting new work after 300 s
    python benchmarks/gpu_check.py OUTDIR --cpu            # CPU smoke run of checks 1, 2 and 4 (fp32)
benchmarks/gpu_check.sh wraps it for the lent machine (carried wheels, PYTHONPATH). Exit status: 0 when
every check passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DIGITS = ROOT / "jobs/configs/digits.yaml"
# a small ViT for DeepSpeed: 32 px digits in 4 px patches (64 tokens), 4 blocks of width 192
SMALL_VIT = ["model.name=vit_tiny_patch16_224", "model.img_size=32", "model.patch_size=4", "model.kwargs.depth=4",
             "model.depth=null", "model.dim=null", "model.kernel_size=null"]  # the digits config is a ConvMixer


class Checks:
    """PASS/FAIL lines as they happen, and OUTDIR/gpu_check.json rewritten after each (a time limit keeps
    what was measured before it)."""

    def __init__(self, out: Path, info: dict):
        self.out, self.results = out, {"machine": info, "checks": {}}
        self.t0 = time.time()

    def record(self, name: str, ok: bool, detail: str, **figures) -> bool:
        line = f"{'PASS' if ok else 'FAIL'} {name}: {detail}"
        print(line, flush=True)
        self.results["checks"][name] = {"ok": ok, "detail": detail, "t_s": round(time.time() - self.t0, 1), **figures}
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str))
        return ok


def machine() -> dict:
    import torch
    from importlib.metadata import PackageNotFoundError, version
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "python": platform.python_version(), "cpus": os.cpu_count()}
    for pkg in ("torch", "torchvision", "timm", "numpy", "pyarrow", "deepspeed", "torchcodec", "opencv-python-headless",
                "opencv-contrib-python-headless",
                "pillow", "scikit-learn", "submitit"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    nccl=".".join(map(str, torch.cuda.nccl.version())))
    else:
        info["gpu"] = "none (CPU)"
    return info


def run(cmd: list, log: Path, env: dict | None = None, timeout: float = 300) -> tuple[int, str]:
    """A command with its output in `log`; (exit status, output). 124 when it ran past `timeout`."""
    full = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2", **(env or {}))
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        try:
            code = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=full, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=max(1.0, timeout)).returncode
        except subprocess.TimeoutExpired:
            code = 124
        f.write(f"\n[gpu_check] exit {code} after {time.time() - t0:.1f}s\n")
    return code, log.read_text(errors="replace")


def train(args, name: str, overrides: list, env: dict | None = None, timeout: float = 240,
          root: Path | None = None) -> tuple[int, str, Path]:
    root = root or args.work / name
    # the IMGTRAIN_TEST_* variables (a signal at a step) take effect through the tests' entry point only
    entry = "tests/hooked_train.py" if any(k.startswith("IMGTRAIN_TEST_") for k in env or {}) else "jobs/train.py"
    cmd = [PY, ROOT / entry, "--config", DIGITS, f"data.path={args.digits}", f"output.root={root}",
           f"output.run={name}", "trainer.log_every_seconds=30", *args.device_overrides, *overrides]
    code, text = run(cmd, args.work / "logs" / f"{name}.log", env, timeout)
    return code, text, root / "runs" / name


def test_acc1(text: str) -> float | None:
    for line in reversed(text.splitlines()):
        if line.startswith("[imgtrain] test:"):
            parts = line.split()
            return float(parts[parts.index("acc1") + 1])
    return None


def tail(text: str, n: int = 1500) -> str:
    return text[-n:]


def weights(path: Path) -> dict:
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def compare(a: dict, b: dict) -> tuple[bool, float]:
    """(bit-identical, max abs difference) of two state dicts."""
    import torch
    if a.keys() != b.keys():
        return False, float("inf")
    same = all(torch.equal(a[k], b[k]) for k in a)
    diff = max(((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()),
               default=0.0)
    return same, diff


# ------------------------------------------------------------------------------------------------ checks

def check_precision(args, checks: Checks, precision: str) -> None:
    code, text, _ = train(args, f"prec-{precision}", ["trainer.epochs=2", f"trainer.precision={precision}"])
    acc = test_acc1(text)
    ok = code == 0 and acc is not None and acc >= args.cpu_acc1 - args.acc_tolerance
    checks.record(f"precision-{precision}", ok, f"exit {code}, test acc1 {acc} (CPU fp32: {args.cpu_acc1}, "
                  f"tolerance {args.acc_tolerance})", exit=code, acc1=acc, log=None if ok else tail(text))


def check_resume(args, checks: Checks) -> None:
    extra = ["trainer.epochs=2", "trainer.deterministic=true", f"trainer.precision={args.amp}"]
    with ThreadPoolExecutor(2) as pool:
        straight = pool.submit(train, args, "resume", extra, root=args.work / "resume-straight")
        stopped = pool.submit(train, args, "resume", extra, {"IMGTRAIN_TEST_SIGNAL_AT_STEP": str(args.signal_step)},
                              root=args.work / "resume-signal")
        (c1, t1, d1), (c2, t2, d2) = straight.result(), stopped.result()
    if c1 != 0 or c2 != 75:
        checks.record("resume", False, f"straight run exit {c1} (want 0), signalled run exit {c2} (want 75)",
                      log=tail(t1 if c1 else t2))
        return
    import torch
    step = torch.load(d2 / "checkpoints/last.pt", map_location="cpu", weights_only=True)["state"]["step"]
    c3, t3, d3 = train(args, "resume", extra, root=args.work / "resume-signal")
    if c3 != 0:
        checks.record("resume", False, f"resumed run exit {c3}", log=tail(t3))
        return
    same, diff = compare(weights(d1 / "checkpoints/last.pt"), weights(d3 / "checkpoints/last.pt"))
    acc_a, acc_b = test_acc1(t1), test_acc1(t3)
    resumed = "resumed resume at epoch" in t3
    checks.record("resume", resumed, f"SIGUSR1 at step {step} -> exit 75 -> resumed -> DONE; final weights "
                  f"{'bit-identical' if same else f'differ, max abs {diff:.3g}'} to the uninterrupted run; test acc1 "
                  f"{acc_a} vs {acc_b}", stop_step=step, bit_identical=same, max_abs_diff=diff,
                  acc1_straight=acc_a, acc1_resumed=acc_b)


def check_compile(args, checks: Checks) -> None:
    code, text, _ = train(args, "compile-cl", ["trainer.epochs=2", f"trainer.precision={args.amp}",
                                               "trainer.compile=true", "trainer.channels_last=true"],
                          timeout=args.budget_left())
    acc = test_acc1(text)
    ok = code == 0 and acc is not None and acc >= args.cpu_acc1 - args.acc_tolerance
    checks.record("compile+channels_last", ok, f"exit {code}, test acc1 {acc}", exit=code, acc1=acc,
                  log=None if ok else tail(text))


def vit_reference(args) -> tuple[int, str]:
    """The same small ViT without DeepSpeed (dist.strategy=single, bf16 autocast over fp32 weights), once for
    both ZeRO checks: what the ViT reaches on the digits in these epochs, DeepSpeed aside."""
    with args.vit_lock:
        if args.vit_single is None:
            code, text, _ = train(args, "vit-single", [*SMALL_VIT, f"trainer.precision={args.amp}",
                                                       f"trainer.epochs={args.ds_epochs}", "optim.lr=1e-3"],
                                  timeout=args.budget_left())
            args.vit_single = (code, text)
    return args.vit_single


def check_deepspeed(args, checks: Checks, stage: int) -> None:
    name = f"zero{stage}"
    extra = [*SMALL_VIT, "dist.strategy=deepspeed", f"dist.zero_stage={stage}", f"trainer.precision={args.amp}",
             f"trainer.epochs={args.ds_epochs}", "optim.lr=1e-3"]
    with ThreadPoolExecutor(3) as pool:
        straight = pool.submit(train, args, name, extra, root=args.work / f"{name}-straight",
                               timeout=args.budget_left())
        stopped = pool.submit(train, args, name, extra, {"IMGTRAIN_TEST_SIGNAL_AT_STEP": str(args.ds_signal_step)},
                              root=args.work / f"{name}-signal", timeout=args.budget_left())
        reference = pool.submit(vit_reference, args)
        (c1, t1, d1), (c2, t2, d2), (c0, t0) = straight.result(), stopped.result(), reference.result()
    if c1 != 0 or c2 != 75:
        checks.record(f"deepspeed-zero{stage}", False, f"straight run exit {c1} (want 0), signalled run exit {c2} "
                      "(want 75)", log=tail(t1 if c1 else t2, 3000))
        return
    c3, t3, d3 = train(args, name, extra, root=args.work / f"{name}-signal", timeout=args.budget_left())
    if c3 != 0:
        checks.record(f"deepspeed-zero{stage}", False, f"resumed run exit {c3}", log=tail(t3, 3000))
        return
    from imgtrain.engine.deepspeed_strategy import export_fp32
    same, diff = compare(weights(export_fp32(d1, "last")), weights(export_fp32(d3, "last")))
    steps = json.loads((d3 / "checkpoints/deepspeed" / (d3 / "checkpoints/deepspeed/last").read_text().strip()
                        / "imgtrain.json").read_text())["step"]
    acc_a, acc_b, acc_ref = test_acc1(t1), test_acc1(t3), test_acc1(t0) if c0 == 0 else None
    ok = "resumed" in t3 and acc_b is not None and acc_ref is not None and acc_b >= acc_ref - args.ds_tolerance
    checks.record(f"deepspeed-zero{stage}", ok, f"{steps} steps, SIGUSR1 at step {args.ds_signal_step} -> exit 75 -> "
                  f"resumed -> DONE; final weights {'bit-identical' if same else f'differ, max abs {diff:.3g}'} to "
                  f"the uninterrupted run; test acc1 {acc_a} vs {acc_b}; the same ViT without DeepSpeed {acc_ref} "
                  f"(tolerance {args.ds_tolerance})", steps=steps, bit_identical=same, max_abs_diff=diff,
                  acc1_straight=acc_a, acc1_resumed=acc_b, acc1_single=acc_ref,
                  log=None if ok else tail(t3 if acc_ref is not None else t0, 3000))


def check_benchmark(args, checks: Checks, name: str, cmd: list, cap: float) -> None:
    budget = min(cap, args.budget_left())
    if budget < 30:
        checks.record(name, False, f"not run: {budget:.0f}s left of --budget")
        return
    code, text = run([PY, *cmd, "--json", args.out / f"{name}.json"], args.work / "logs" / f"{name}.log",
                     timeout=budget)
    lines = [ln for ln in text.splitlines() if not ln.startswith("$ ")]
    ratio = next((ln for ln in reversed(lines) if ln.startswith("ratio:")), None)
    print("\n".join("   " + ln for ln in lines[-25:]), flush=True)
    checks.record(name, code == 0, f"exit {code}{' (time limit)' if code == 124 else ''}, {ratio}",
                  log=None if code == 0 else tail(text, 4000))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu_check.json, the benchmarks' JSON and logs.tar.gz")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temp dir)")
    p.add_argument("--budget", type=float, default=420, help="seconds after which no new check starts "
                   "and running benchmarks are cut (default 420)")
    p.add_argument("--cpu-acc1", type=float, default=0.961,
                   help="test acc1 of the same 2-epoch fp32 run on the CPU (benchmarks/RESULTS.md)")
    p.add_argument("--acc-tolerance", type=float, default=0.02)
    p.add_argument("--signal-step", type=int, default=50, help="optimizer step of the SIGUSR1 (digits: 39 per epoch)")
    p.add_argument("--ds-epochs", type=int, default=8)
    p.add_argument("--ds-signal-step", type=int, default=150)
    p.add_argument("--ds-tolerance", type=float, default=0.1,
                   help="ZeRO's test acc1 may be this much below the same ViT's without DeepSpeed (bf16 weights)")
    p.add_argument("--only", default="precision,resume,compile,deepspeed,gpu_deepspeed,gpu_throughput",
                   help="comma list of checks to run")
    p.add_argument("--cpu", action="store_true", help="smoke run on the CPU: checks 1-4, fp32/bf16, no compile")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="imgtrain-gpucheck-"))
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget
    args.budget_left = lambda: max(0.0, deadline - time.time())
    args.vit_lock, args.vit_single = threading.Lock(), None
    only = set(args.only.split(","))
    import torch
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device here: use --cpu for a smoke run", file=sys.stderr)
        return 2
    args.amp = "fp32" if args.cpu else "bf16"
    # on the CPU: the engine's defaults; on the card: as a user would run it (workers feed, pinned memory)
    args.device_overrides = ["data.num_workers=0"] if args.cpu else ["data.num_workers=2"]
    if args.cpu:
        only -= {"compile", "gpu_deepspeed", "gpu_throughput"}
        args.ds_epochs, args.ds_signal_step = 2, 50
    checks = Checks(args.out, machine())
    print("machine: " + ", ".join(f"{k} {v}" for k, v in checks.results["machine"].items()), flush=True)

    args.digits = args.work / "digits"
    code, text = run([PY, "-m", "shards", "pack", "digits", "-", args.digits, "--upscale", "32"],
                     args.work / "logs" / "pack.log")
    if not checks.record("pack-digits", code == 0, f"exit {code}", log=None if code == 0 else tail(text)):
        return 1

    # 1-4: correctness, side by side on the card (each its own process)
    jobs = [(check_precision, (pr,)) for pr in (("fp32",) if args.cpu else ("fp32", "bf16", "fp16")) if "precision" in only]
    jobs += [(check_resume, ())] if "resume" in only else []
    jobs += [(check_compile, ())] if "compile" in only else []
    jobs += [(check_deepspeed, (stage,)) for stage in (2, 3) if "deepspeed" in only]
    with ThreadPoolExecutor(1 if args.cpu else len(jobs) or 1) as pool:
        futures = {pool.submit(fn, args, checks, *a): f"{fn.__name__}{a}" for fn, a in jobs}
        for fut, what in futures.items():
            try:
                fut.result()
            except Exception as e:  # a broken check is a FAIL line, the others go on
                checks.record(what, False, f"{type(e).__name__}: {e}")

    # 5-6: timed, alone on the card
    if "gpu_deepspeed" in only:
        check_benchmark(args, checks, "gpu_deepspeed", [ROOT / "benchmarks/gpu_deepspeed.py", "--batch", "128",
                                                        "--steps", "40", "--work", args.work / "ds-bench"], cap=150)
    if "gpu_throughput" in only:
        check_benchmark(args, checks, "gpu_throughput",
                        [ROOT / "benchmarks/gpu_throughput.py", "--batch", "256", "--steps", "20", "--images", "8000",
                         "--workers", str(min(16, os.cpu_count())), "--work", args.work / "tp-bench"], cap=330)

    subprocess.run(["tar", "czf", str(args.out / "logs.tar.gz"), "-C", str(args.work), "logs"], check=False)
    failed = [k for k, v in checks.results["checks"].items() if not v["ok"]]
    print(f"gpu_check: {len(checks.results['checks']) - len(failed)} passed, {len(failed)} failed"
          f"{' (' + ', '.join(failed) + ')' if failed else ''} in {time.time() - checks.t0:.0f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
