"""slurm/ recipes on a real SLURM cluster (tests/cluster): `sbatch slurm/ava_vit.sbatch` trains a tiny ViT
on tiny AVA-format shards to DONE on one node (2 processes) and on two nodes (real multi-node torchrun);
a job preempted with USR1 (before a short time limit) or requeued from outside resumes and ends with the
same weights as an uninterrupted run; a bad config fails in seconds; a crashing run ends FAILED after
trainer.max_attempts attempts; an array with `%a` in its overrides trains one run per task and a signalled
task requeues alone; pack_shards stopped mid-pack resumes to identical shards. Plus the dry runs (no
cluster, the generic slurm/train.sbatch included) and what every recipe asks SLURM for.

Every #SBATCH default the 2-core test cluster cannot satisfy (GPUs, memory, CPUs) is overridden on the
sbatch command line, as a user would; logs go to tmp_path (--output/--error)."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
import yaml

from conftest import PY, ROOT, run_cmd, train_cmd
from imgtrain import config as C
from imgtrain import runs
from imgtrain.logs import read_metrics
from tests.hooked_pack import STALL_ENV
from sourcedata import write_ava
from tests.cluster.fixtures import base_client_env

pytestmark = pytest.mark.slow

RECIPE = ROOT / "slurm/ava_vit.sbatch"
CONFIG = ROOT / "jobs/configs/ava_vit.yaml"
RECIPES = sorted((ROOT / "slurm").glob("*.sbatch"))
TRAIN_RECIPES = [r for r in RECIPES if r.name != "pack_shards.sbatch"]
GENERIC = ROOT / "slurm/train.sbatch"  # CONFIG is its first argument
TINY = ["model.name=vit_tiny_patch16_224", "model.img_size=16", "model.patch_size=8", "model.pretrained_path=null",
        "data.img_size=16", "data.batch_size=4", "data.num_workers=0", "trainer.precision=fp32",
        "trainer.log_every_steps=1", "trainer.log_every_seconds=0"]
# 43 train samples / batch 4 = 10 steps per epoch on one process: 100 steps, long enough to signal mid-run
LONG = [*TINY, "trainer.epochs=10"]
TOTAL_STEPS = 100
# the recipes' defaults that do not fit the test cluster; --time=15 also keeps SLURM's own
# --signal=B:USR1@300 away (tests send their signals themselves)
SBATCH = ["--gpus-per-node=0", "--mem=2G", "--cpus-per-task=1", "--time=15"]


# ------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def ava_shards(tmp_path_factory):
    """48 real photos in the AVA layout (AVA.txt + images/), packed into shards of 16."""
    base = tmp_path_factory.mktemp("ava")
    src = write_ava(base / "src", n=48).root
    run_cmd([PY, "-m", "shards", "pack", "ava", src, base / "shards", "--shard-size", "16"])
    return base / "shards"


@pytest.fixture
def submitted():
    """Jobs a test submitted; cancelled when it ends, so a failed test leaves nothing running."""
    jobs = []
    yield jobs
    for job in jobs:
        job.cluster.run(["scancel", str(job.id)], check=False)


@pytest.fixture(scope="module")
def reference(ava_shards, tmp_path_factory):
    """The final weights of the LONG run without interruption (plain python, one process, 1 thread:
    what the jobs below run with --cpus-per-task=1)."""
    root = tmp_path_factory.mktemp("reference")
    run_cmd(train_cmd(CONFIG, f"data.path={ava_shards}", *LONG, f"output.root={root}"))
    return weights(the_run_dir(root) / "checkpoints/last.pt")


class Job:
    def __init__(self, cluster, job_id: int | str, logs: Path):
        self.cluster, self.id, self.total = cluster, job_id, TOTAL_STEPS
        self.out, self.err = logs / f"ava_vit-{job_id}.out", logs / f"ava_vit-{job_id}.err"

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-6000:]}" for p in (self.out, self.err)
                       if p.exists())

    def wait(self, timeout: float) -> str:
        try:
            return self.cluster.wait_job(self.id, timeout=timeout, source="squeue")
        except TimeoutError as e:
            raise AssertionError(f"{e}{self.logs()}") from None

    def wait_for_step(self, step: int, timeout: float = 120) -> None:
        """Until the job's progress output shows a training step >= `step` (the trainer is mid-run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.err.read_text(errors="replace") if self.err.exists() else ""
            if any(int(s) >= step for s in re.findall(rf"step (\d+)/{self.total}\b", text)):
                return
            time.sleep(0.1)
        raise AssertionError(f"step {step} not reached after {timeout}s{self.logs()}")

    def wait_for_out(self, *texts: str, timeout: float = 120) -> str:
        """Until the job's .out holds every one of `texts`; returns the .out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.out.read_text(errors="replace") if self.out.exists() else ""
            if all(t in out for t in texts):
                return out
            time.sleep(0.1)
        missing = [t for t in texts if t not in out]
        raise AssertionError(f"{missing} not in {self.out.name} after {timeout}s{self.logs()}")


def submit(submitted, cluster, logs: Path, *overrides, sbatch=(), env=None, cwd=ROOT, recipe=RECIPE,
           name="%x-%j") -> Job:
    proc = cluster.run(["sbatch", "--parsable", f"--partition={cluster.partition}", *SBATCH, *sbatch,
                        f"--output={logs}/{name}.out", f"--error={logs}/{name}.err", recipe, *overrides],
                       env=env, cwd=cwd)
    job = Job(cluster, int(proc.stdout.strip().split(";")[0]), logs)
    submitted.append(job)
    return job


def restarts(attempts) -> list:
    return [int(a["slurm"]["restart_count"] or 0) for a in attempts]  # unset before the first requeue


def shard_hashes(shards: Path) -> list:
    manifest = json.loads((shards / "manifest.json").read_text())
    return [(s["file"], s["sha256"]) for split in manifest["splits"].values() for s in split["shards"]]


def the_run_dir(root: Path) -> Path:
    dirs = list((root / "runs").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def run_json(rdir: Path) -> dict:
    return json.loads((rdir / "run.json").read_text())


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def dry_run(*args, env=None, recipe=RECIPE):
    full = dict(base_client_env(), IMGTRAIN_DRY_RUN="1", **(env or {}))
    return subprocess.run(["bash", str(recipe), *map(str, args)], capture_output=True, text=True, env=full,
                          cwd=ROOT, timeout=120)


# ------------------------------------------------------------------------------------------- no cluster

def test_recipes_ask_for_signal_requeue_and_one_task_per_node():
    assert {r.name for r in RECIPES} >= {"ava_vit.sbatch", "cifar10_convmixer.sbatch", "cifar100_vit_finetune.sbatch",
                                         "clipart_vgg19.sbatch", "pack_shards.sbatch"}
    for recipe in RECIPES:
        text = recipe.read_text()
        sbatch = re.findall(r"^#SBATCH (\S+)", text, re.M)
        for opt in ("--requeue", "--open-mode=append", "--ntasks-per-node=1"):
            assert opt in sbatch, (recipe.name, opt)
        assert any(re.fullmatch(r"--signal=B:USR1@\d+", o) for o in sbatch), recipe.name
        assert any(o.startswith("--output=slurm/logs/") for o in sbatch)
        assert any(o.startswith("--error=slurm/logs/") for o in sbatch)
        assert "exec bash \"$repo/slurm/launch.sh\"" in text and '"$@"' in text
        if recipe in TRAIN_RECIPES and recipe != GENERIC:
            assert any(o.startswith("--gpus-per-node=") for o in sbatch), recipe.name
            config = re.search(r"--config (\S+)", text).group(1)
            assert (ROOT / config).is_file() and config == f"jobs/configs/{recipe.stem}.yaml"
    assert GENERIC in TRAIN_RECIPES and '--config "${config}"' in GENERIC.read_text()
    assert (ROOT / "slurm/logs").is_dir()  # #SBATCH --output needs it before the job starts


def test_dry_run_prints_what_would_run(ava_shards, tmp_path):
    pretrained = tmp_path / "vit.safetensors"
    pretrained.write_bytes(b"")
    args = [f"data.path={ava_shards}", f"model.pretrained_path={pretrained}", f"output.root={tmp_path}"]
    proc = dry_run(*args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("imgtrain launch, dry run: nothing is started\n")
    assert re.search(rf"^  run dir      {tmp_path}/runs/ava_vit-[0-9a-f]{{8}}$", out, re.M), out
    assert "  run          ava_vit-" in out and "(NEW, 0 attempt(s) so far; trainer.max_attempts=5)" in out
    assert "  nodes        1 (#SBATCH --nodes in " in out
    assert "  procs/node   4 (#SBATCH --gpus-per-node in " in out and "OMP_NUM_THREADS=8" in out
    python = ROOT / ".venv/bin/python" if (ROOT / ".venv/bin/python").exists() else "python3"
    assert (f"OMP_NUM_THREADS=8 srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task=32 "
            f"bash {ROOT}/slurm/launch.sh --node {python} -m torch.distributed.run --nnodes=1 --nproc_per_node=4 "
            f"--rdzv_backend=c10d --rdzv_endpoint=FIRST_NODE:PORT --rdzv_id=JOB_ID --max_restarts=0 "
            f"{ROOT}/jobs/train.py --config jobs/configs/ava_vit.yaml {' '.join(args)}") in out
    assert "  container    none" in out

    # CPU partition: IMGTRAIN_NPROC; the container: every Python step inside apptainer, roots bound
    sif = tmp_path / "imgtrain.sif"
    proc = dry_run(*args, env={"IMGTRAIN_NPROC": "2", "IMGTRAIN_SIF": str(sif)})
    assert proc.returncode == 0, proc.stderr
    binds = f"{ROOT},{tmp_path},{ava_shards},{pretrained}"
    assert f"  container    {sif}: apptainer exec --nv --bind {binds}" in proc.stdout
    assert (f"--cpus-per-task=32 bash {ROOT}/slurm/launch.sh --node apptainer exec --nv --bind {binds} --pwd {ROOT} "
            f"--env PYTHONPATH={ROOT} {sif} python -m torch.distributed.run --nnodes=1 --nproc_per_node=2 ") in proc.stdout
    assert "procs/node   2 (IMGTRAIN_NPROC)" in proc.stdout and "OMP_NUM_THREADS=16" in proc.stdout

    # the launcher directly, and a config problem: exit 2 in seconds, naming the key
    started = time.monotonic()
    proc = subprocess.run(["bash", ROOT / "slurm/launch.sh", "--dry-run", "--config", "jobs/configs/ava_vit.yaml",
                           *args, "optim.lrr=1"], capture_output=True, text=True, env=base_client_env(), cwd=tmp_path)
    assert proc.returncode == 2 and "dry run" not in proc.stdout
    assert "unknown config key 'optim.lrr'" in proc.stderr and "did you mean 'optim.lr'" in proc.stderr
    assert time.monotonic() - started < 30
    proc = dry_run(f"data.path={ava_shards}", f"output.root={tmp_path}")  # the weights are required
    assert proc.returncode == 2 and "missing required value 'model.pretrained_path'" in proc.stderr

    # outside SLURM without a dry run: a clear refusal; pack_shards dry run
    proc = subprocess.run(["bash", RECIPE, *args], capture_output=True, text=True, env=base_client_env(), cwd=ROOT)
    assert proc.returncode == 2 and "not inside a SLURM job" in proc.stderr
    proc = dry_run("ava", "/data/AVA", "data/shards/ava", "--resize", "256", recipe=ROOT / "slurm/pack_shards.sbatch")
    assert proc.returncode == 0, proc.stderr
    assert f"{python} -m shards pack ava /data/AVA data/shards/ava --resize 256 --workers 16" in proc.stdout


def test_generic_recipe_and_array_task_dry_run(digits_shards, tmp_path):
    """slurm/train.sbatch CONFIG [key=value ...] runs any config; `%a` becomes the array task id (task 0
    in a dry run outside SLURM), so `sbatch --array=0-2 ... trainer.seed=%a` trains three runs."""
    config = "tests/configs/tiny_digits.yaml"
    args = [f"data.path={digits_shards}", f"output.root={tmp_path}"]
    proc = dry_run(config, *args, "trainer.seed=%a", recipe=GENERIC)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "  array task   %a -> 0 (SLURM_ARRAY_TASK_ID=unset, so task 0 is shown)" in out
    assert f"--config {config} data.path={digits_shards} output.root={tmp_path} trainer.seed=0\n" in out
    assert f"  nodes        1 (#SBATCH --nodes in {GENERIC}; " in out
    assert "  procs/node   1 (#SBATCH --gpus-per-node in " in out and "OMP_NUM_THREADS=8" in out
    # task N trains the run of trainer.seed=N (the array test on the cluster runs tasks 0 and 1)
    run_of = {seed: runs.run_id(C.load(ROOT / config, [*args, f"trainer.seed={seed}"]))
              for seed in (0, 1)}
    assert f"  run          {run_of[0]} (NEW" in out and run_of[0] != run_of[1]
    for bad in ([], ["trainer.seed=1"]):  # no CONFIG first: usage, exit 2
        proc = dry_run(*bad, recipe=GENERIC)
        assert proc.returncode == 2 and "usage: sbatch slurm/train.sbatch CONFIG" in proc.stderr
    proc = dry_run("jobs/configs/nothing.yaml", recipe=GENERIC)
    assert proc.returncode == 2 and "config jobs/configs/nothing.yaml not found" in proc.stderr


# ------------------------------------------------------------------------------------------- one node

@pytest.mark.multiproc
def test_one_node_two_processes_to_done_then_done_is_left_alone(submitted, slurm_cluster, ava_shards, tmp_path):
    overrides = [f"data.path={ava_shards}", f"output.root={tmp_path}", *TINY, "trainer.epochs=2"]
    job = submit(submitted, slurm_cluster, tmp_path, *overrides, sbatch=["--cpus-per-task=2"],
                 env={"IMGTRAIN_NPROC": "2"})
    assert job.wait(timeout=420) == "COMPLETED", job.logs()
    rdir = the_run_dir(tmp_path)
    assert (rdir / "DONE").exists() and not (rdir / "FAILED").exists()
    info = run_json(rdir)
    assert info["world_size"] == 2 and len(info["attempts"]) == 1
    assert info["attempts"][0]["status"] == "DONE" and info["attempts"][0]["slurm"]["job_id"] == str(job.id)
    steps = 2 * (43 // 8)
    table = read_metrics(rdir)
    train_loss = table.filter(pc.and_(pc.equal(table["split"], "train"), pc.equal(table["metric"], "loss")))
    assert sorted(train_loss["step"].to_pylist()) == list(range(1, steps + 1))
    assert set(table.filter(pc.equal(table["split"], "val"))["metric"].to_pylist()) >= {"emd", "mse", "srcc"}
    assert (rdir / "summary.parquet").exists() and list((rdir / "metrics").glob("*.parquet"))
    for name in ("last.pt", "best.pt"):
        assert (rdir / "checkpoints" / name).exists()
    out = job.out.read_text()
    assert "--nproc_per_node=2" in out
    assert f"run {rdir.name} is DONE" in out
    assert (rdir / "logs" / job.out.name).resolve() == job.out  # the job's logs are linked from the run

    # submitted again: nothing to do, exit 0 at once, no new attempt
    again = submit(submitted, slurm_cluster, tmp_path, *overrides, env={"IMGTRAIN_NPROC": "2"})
    assert again.wait(timeout=60) == "COMPLETED", again.logs()
    assert "is DONE" in again.out.read_text() and "start:" not in again.out.read_text()
    assert len(run_json(rdir)["attempts"]) == 1


def test_bad_config_fails_in_seconds_without_requeue(submitted, slurm_cluster, ava_shards, tmp_path):
    started = time.monotonic()
    job = submit(submitted, slurm_cluster, tmp_path, f"data.path={ava_shards}", f"output.root={tmp_path}", *TINY,
                 "optim.lrr=1")
    assert job.wait(timeout=60) == "FAILED", job.logs()
    assert time.monotonic() - started < 45
    err = job.err.read_text()
    assert "unknown config key 'optim.lrr'" in err and "not starting, not requeueing" in err
    show = slurm_cluster.run(["scontrol", "show", "job", str(job.id)]).stdout
    assert "ExitCode=2:0" in show and "Restarts=0" in show
    assert not (tmp_path / "runs").exists()


def test_usr1_before_a_short_time_limit_checkpoints_requeues_and_resumes_exactly(submitted, slurm_cluster, ava_shards,
                                                                              tmp_path, reference):
    """--time=2: the USR1 that SLURM sends --signal seconds before the limit (B: to the batch shell only)
    is sent here explicitly with scancel --signal=USR1 --batch, mid-run: SLURM's own comes up to
    --signal + 30 s early, at a moment a test cannot choose. The job checkpoints, requeues itself and
    finishes in a later attempt with the uninterrupted run's weights."""
    job = submit(submitted, slurm_cluster, tmp_path, f"data.path={ava_shards}", f"output.root={tmp_path}", *LONG,
                 sbatch=["--time=2", "--signal=B:USR1@5"])
    job.wait_for_step(10)
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", str(job.id)])
    assert job.wait(timeout=420) == "COMPLETED", job.logs()
    rdir = the_run_dir(tmp_path)
    assert (rdir / "DONE").exists()
    attempts = run_json(rdir)["attempts"]
    # SLURM's own warning may stop a slow later attempt too (it is due 85-115 s in): then there are more
    assert len(attempts) >= 2 and attempts[-1]["status"] == "DONE", attempts
    assert all(a["status"] == "STOPPED" and a["exit"] == 75 for a in attempts[:-1]), attempts
    assert [a["slurm"]["job_id"] for a in attempts] == [str(job.id)] * len(attempts)
    assert restarts(attempts) == list(range(len(attempts)))
    out, err = job.out.read_text(), job.err.read_text()
    assert "received SIGUSR1: stopping the workers" in out and f"requeue {job.id} (scontrol requeue)" in out
    assert "stopped by SIGUSR1" in out and "[imgtrain] resumed" in out
    assert "TIME LIMIT" not in err  # never killed at the limit
    assert_same_weights(weights(rdir / "checkpoints/last.pt"), reference)


def test_external_requeue_resumes_exactly(submitted, slurm_cluster, ava_shards, tmp_path, reference):
    """`scontrol requeue <job>` from outside: SLURM sends TERM to everything and requeues the job
    itself; the workers checkpoint within KillWait, the batch script does not requeue again."""
    job = submit(submitted, slurm_cluster, tmp_path, f"data.path={ava_shards}", f"output.root={tmp_path}", *LONG)
    job.wait_for_step(10)
    slurm_cluster.run(["scontrol", "requeue", str(job.id)])
    # the first attempt's two lines: the batch script classifies the TERM (one scontrol call), the
    # workers get SLURM's TERM and the script's forwarded USR1 and name their stop after TERM
    first = job.wait_for_out("received SIGTERM", "stopped by", timeout=60).split("(restart 1)")[0]
    assert "received SIGTERM (slurm)" in first and "stopped by SIGTERM" in first, job.logs()
    assert job.wait(timeout=420) == "COMPLETED", job.logs()
    rdir = the_run_dir(tmp_path)
    attempts = run_json(rdir)["attempts"]
    assert [(a["status"], a["exit"]) for a in attempts] == [("STOPPED", 75), ("DONE", 0)], attempts
    assert restarts(attempts) == [0, 1]
    out = job.out.read_text()
    assert "(scontrol requeue)" not in out, out  # requeued once, by SLURM
    assert_same_weights(weights(rdir / "checkpoints/last.pt"), reference)


def test_real_failure_ends_failed_after_max_attempts(submitted, slurm_cluster, ava_shards, tmp_path):
    """A shard damaged after packing passes the check (the manifest is fine) and breaks training."""
    data = tmp_path / "shards"
    shutil.copytree(ava_shards, data)
    shard = data / "train-000001.tar"
    shard.write_bytes(os.urandom(shard.stat().st_size))
    job = submit(submitted, slurm_cluster, tmp_path, f"data.path={data}", f"output.root={tmp_path}", *TINY,
                 "trainer.max_attempts=2")
    assert job.wait(timeout=420) == "FAILED", job.logs()
    rdir = the_run_dir(tmp_path)
    attempts = run_json(rdir)["attempts"]
    assert [a["status"] for a in attempts] == ["FAILED", "FAILED"], attempts
    assert restarts(attempts) == [0, 1]
    reason = (rdir / "FAILED").read_text()
    assert f"FAILED after 2 failed attempt(s) of job {job.id} (trainer.max_attempts=2)" in reason
    assert "exited with status 1" in reason and "undecodable training samples" in reason
    assert f"last lines of {job.err}" in reason
    assert not (rdir / "DONE").exists()
    assert job.out.read_text().count("(scontrol requeue)") == 1
    show = slurm_cluster.run(["scontrol", "show", "job", str(job.id)]).stdout
    assert "ExitCode=1:0" in show and "Restarts=1" in show


def test_pack_shards_stopped_by_usr1_requeues_and_resumes_to_identical_shards(submitted, slurm_cluster, tmp_path):
    """The first attempt stalls half-way through train-000003.tar (tests/hooked_pack.py, through the
    launcher's IMGTRAIN_PACK_ENTRY; only the first attempt stalls); USR1 to the batch shell stops the packer, the job requeues itself and
    the next attempt keeps the finished shards and writes the rest: the same bytes as one plain pack."""
    src = write_ava(tmp_path / "src", n=16).root
    run_cmd([PY, "-m", "shards", "pack", "ava", src, tmp_path / "reference", "--shard-size", "2", "--workers", "2"])
    out = tmp_path / "shards"
    proc = slurm_cluster.run(["sbatch", "--parsable", f"--partition={slurm_cluster.partition}", "--mem=1G",
                              "--cpus-per-task=2", f"--output={tmp_path}/%x-%j.out", f"--error={tmp_path}/%x-%j.err",
                              ROOT / "slurm/pack_shards.sbatch", "ava", src, out, "--shard-size", "2"],
                             cwd=ROOT, env={STALL_ENV: "train-000003.tar", "IMGTRAIN_PACK_ENTRY": "tests/hooked_pack.py"})
    job = int(proc.stdout.strip())
    log = tmp_path / f"pack_shards-{job}.out"
    deadline = time.monotonic() + 90
    while not list(out.glob(".train-000003.tar.tmp-*")):
        assert time.monotonic() < deadline, f"the pack never reached the stalled shard\n{log.read_text()}"
        time.sleep(0.1)
    assert not (out / "manifest.json").exists()
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    assert slurm_cluster.wait_job(job, timeout=120, source="squeue") == "COMPLETED", \
        (tmp_path / f"pack_shards-{job}.err").read_text()
    text = log.read_text()
    assert "--workers 2" in text and "received SIGUSR1" in text
    assert text.count(f"requeue {job} (scontrol requeue): packing resumes where it stopped") == 1, text
    assert "kept from an earlier run" in text + (tmp_path / f"pack_shards-{job}.err").read_text()
    assert "Restarts=1" in slurm_cluster.run(["scontrol", "show", "job", str(job)]).stdout
    assert json.loads((out / "manifest.json").read_text())["task"] == "score_distribution"
    assert shard_hashes(out) == shard_hashes(tmp_path / "reference")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file or scan state left


def test_array_tasks_train_one_run_each_and_a_signalled_task_requeues_alone(submitted, slurm_cluster, ava_shards,
                                                                           tmp_path):
    """`sbatch --array=0-1 slurm/ava_vit.sbatch ... trainer.seed=%a`: two runs (seeds 0 and 1); USR1 to
    task 1's batch shell requeues only task 1 (`scontrol requeue <array>_1`), which resumes; both DONE."""
    overrides = [f"data.path={ava_shards}", f"output.root={tmp_path}", *TINY, "trainer.epochs=4", "trainer.seed=%a"]
    array = submit(submitted, slurm_cluster, tmp_path, *overrides, sbatch=["--array=0-1"], name="%x-%A_%a").id
    tasks = [Job(slurm_cluster, f"{array}_{t}", tmp_path) for t in (0, 1)]
    for task in tasks:
        task.total = 40  # 10 steps per epoch
    tasks[1].wait_for_step(5)
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", f"{array}_1"])
    assert tasks[1].wait(timeout=300) == "COMPLETED" and tasks[0].wait(timeout=120) == "COMPLETED", \
        tasks[0].logs() + tasks[1].logs()
    slurm_cluster.wait_job(array, timeout=60, source="sacct")
    assert slurm_cluster.sacct_states(array) == {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED"}
    history = slurm_cluster.run(["sacct", "-n", "-X", "-P", "-D", "-j", str(array), "-o", "JobID,State"]).stdout
    assert sorted(line.split("|")[0] for line in history.splitlines() if "REQUEUED" in line) == [f"{array}_1"], \
        history
    runs = {}
    for rdir in (tmp_path / "runs").iterdir():
        assert (rdir / "DONE").exists()
        info = run_json(rdir)
        task = {a["slurm"]["array_task_id"] for a in info["attempts"]}
        assert len(task) == 1 and {a["slurm"]["array_job_id"] for a in info["attempts"]} == {str(array)}
        task = task.pop()
        runs[task] = info
        assert yaml.safe_load((rdir / "config.yaml").read_text())["trainer"]["seed"] == int(task)
    assert sorted(runs) == ["0", "1"]
    assert [a["status"] for a in runs["0"]["attempts"]] == ["DONE"]
    assert [(a["status"], a["exit"]) for a in runs["1"]["attempts"]] == [("STOPPED", 75), ("DONE", 0)]
    out = tasks[1].out.read_text()
    assert f"(array task {array}_1, restart 0)" in out and f"requeue {array}_1 (scontrol requeue)" in out
    assert "trainer.seed=1" in out and "%a" not in out.split("start:", 1)[1]


# ------------------------------------------------------------------------------------------- two nodes

@pytest.mark.multiproc
def test_two_nodes_one_process_each_preempted_and_resumed(submitted, slurm_multinode, ava_shards, tmp_path):
    """Real multi-node torchrun (node1 and node2 are network namespaces), submitted from elsewhere than
    the repository with IMGTRAIN_HOME; stopped mid-run with USR1 to the batch shell, it resumes on both
    nodes and ends DONE."""
    job = submit(submitted, slurm_multinode, tmp_path, f"data.path={ava_shards}", f"output.root={tmp_path}", *LONG,
                 sbatch=["--nodes=2"], env={"IMGTRAIN_HOME": str(ROOT)}, cwd=tmp_path)
    job.total = TOTAL_STEPS // 2  # 2 ranks
    job.wait_for_step(8)
    slurm_multinode.run(["scancel", "--signal=USR1", "--batch", str(job.id)])
    assert job.wait(timeout=420) == "COMPLETED", job.logs()
    rdir = the_run_dir(tmp_path)
    assert (rdir / "DONE").exists()
    info = run_json(rdir)
    assert info["world_size"] == 2 and info["hosts"] == ["node1", "node2"]  # every rank's host
    attempts = info["attempts"]
    assert [(a["status"], a["exit"]) for a in attempts] == [("STOPPED", 75), ("DONE", 0)], attempts
    assert all(a["world_size"] == 2 and a["slurm"]["node_list"] == "node[1-2]" for a in attempts)
    out = job.out.read_text()
    for node in ("node1", "node2"):  # torchrun started on both nodes, in both attempts
        assert len(re.findall(rf"node {node}: \S+ -m torch.distributed.run --nnodes=2 ", out)) == 2, out
    assert "--nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=node1:" in out
    assert f"--rdzv_id={job.id}" in out and f"node1:{20000 + job.id % 20000}" in out
    assert "2 rank(s)" in out and "stopped by SIGUSR1" in out and "[imgtrain] resumed" in out
    # torchrun reports the workers' exit 75 as a failure: the node tasks report 0 so that srun does not kill
    assert "node node2: torchrun exited 1 after SIGUSR1 (the workers stopped); reporting 0 to srun" in out
    assert (rdir / "checkpoints/last.pt").exists() and list((rdir / "metrics").glob("*.parquet"))
    table = read_metrics(rdir)
    train_loss = table.filter(pc.and_(pc.equal(table["split"], "train"), pc.equal(table["metric"], "loss")))
    assert sorted(train_loss["step"].to_pylist()) == list(range(1, TOTAL_STEPS // 2 + 1))  # none twice
