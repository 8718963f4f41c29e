"""The DCGAN training job: the data as one tensor, one GAN update, and the resumable loop that logs
losses, writes sample grids and checkpoints, and stops cleanly on SIGUSR1/SIGTERM (exit 75)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imgtrain import runs
from imgtrain.logs import MetricWriter, atomic_write_bytes, resolve_root
from imgtrain.runs import REQUEUE_EXIT_CODE
from imgtrain.studies.dcgan.config import GanParams, config_hash, config_of
from imgtrain.studies.dcgan.data import DataError, load_mnist_dir, load_shard_images, to_tensor
from imgtrain.studies.dcgan.models import Discriminator, Generator, init_weights, sample_grid_png, spatial_plan


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
