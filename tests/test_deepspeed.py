"""dist.strategy=deepspeed on CPU (gloo, 2 processes): the same engine, logs and resume guarantees."""
import json
import os
import subprocess
import time

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from conftest import PY, ROOT, run_cmd, train_cmd
from imgtrain import config as C
from imgtrain import models
from imgtrain.engine.deepspeed_strategy import consolidated_state_dict
from imgtrain.logs import read_metrics

CFG = ROOT / "tests/configs/tiny_digits.yaml"
pytestmark = pytest.mark.slow


def args(data, root, run, *extra):
    return [f"data.path={data}", f"output.root={root}", f"output.run={run}", "data.batch_size=8", "trainer.epochs=1",
            *extra]


def losses(rdir):
    t = read_metrics(rdir)
    t = t.filter(pc.and_(pc.equal(t["split"], "train"), pc.equal(t["metric"], "loss"))).sort_by("step")
    return np.array(t["value"].to_pylist())


def last_weights(rdir):
    ds = rdir / "checkpoints/deepspeed"
    return consolidated_state_dict(ds, (ds / "last").read_text().strip())


@pytest.fixture(scope="module")
def ddp_run(digits_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    run_cmd(train_cmd(CFG, *args(digits_shards, root, "ddp", "trainer.max_steps=20"), nproc=2))
    return root / "runs/ddp"


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_follow_the_ddp_loss_curve(digits_shards, tmp_path, ddp_run, stage):
    run_cmd(train_cmd(CFG, *args(digits_shards, tmp_path, "ds", "trainer.max_steps=20", "dist.strategy=deepspeed",
                                 f"dist.zero_stage={stage}"), nproc=2))
    ds, ddp = losses(tmp_path / "runs/ds"), losses(ddp_run)
    assert len(ds) == len(ddp) == 20
    assert np.max(np.abs(ds - ddp) / np.abs(ddp)) < 1e-4
    val = {r: read_metrics(r).filter(pc.equal(read_metrics(r)["split"], "val")) for r in (tmp_path / "runs/ds", ddp_run)}
    acc = [dict(zip(t["metric"].to_pylist(), t["value"].to_pylist()))["acc1"] for t in val.values()]
    assert acc[0] == acc[1]  # evaluation (ZeRO-3: in lockstep across ranks) sees the same model
    assert (tmp_path / "runs/ds/DONE").exists()


@pytest.mark.multiproc
def test_signal_resume_is_exact_and_kill_during_save_keeps_the_previous(digits_shards, tmp_path):
    # log rows every 7 steps: the resumes (steps 20 and 50) fall inside log windows, whose sums the checkpoint holds
    common = ["dist.strategy=deepspeed", "dist.zero_stage=2", "trainer.ckpt_every_steps=20", "trainer.log_every_steps=7"]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_cmd(train_cmd(CFG, *args(digits_shards, straight, "ds", *common), nproc=2))

    # kill -9 while the second checkpoint (step 40) is written but not yet published
    flag = tmp_path / "paused"
    env = dict(os.environ, OMP_NUM_THREADS="1", IMGTRAIN_TEST_PAUSE_IN_SAVE=str(flag), IMGTRAIN_TEST_PAUSE_AT_SAVE="2")
    proc = subprocess.Popen([str(c) for c in train_cmd(CFG, *args(digits_shards, resumed, "ds", *common), nproc=2)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert flag.exists()
    os.killpg(proc.pid, 9)
    proc.wait()
    ds_dir = resumed / "runs/ds/checkpoints/deepspeed"
    assert (ds_dir / "last").read_text() == "step000000020" and (ds_dir / ".tmp-step000000040").is_dir()

    # resume from step 20, then stop by signal at step 50, then finish
    stopped = run_cmd(train_cmd(CFG, *args(digits_shards, resumed, "ds", *common), nproc=2),
                      env={"IMGTRAIN_TEST_SIGNAL_AT_STEP": "50"}, check=False)
    assert "resumed ds at epoch 0 step 20" in stopped.stdout
    run = json.loads((resumed / "runs/ds/run.json").read_text())
    assert run["attempts"][-1]["status"] == "STOPPED"
    assert (ds_dir / "last").read_text() == "step000000050"
    run_cmd(train_cmd(CFG, *args(digits_shards, resumed, "ds", *common), nproc=2))
    a, b = last_weights(straight / "runs/ds"), last_weights(resumed / "runs/ds")
    assert all(torch.equal(a[k], b[k]) for k in a)
    from test_fault_tolerance import comparable_metrics  # every row but img_per_s
    assert comparable_metrics(straight / "runs/ds") == comparable_metrics(resumed / "runs/ds")

    # another world size under ZeRO: tests/test_elastic.py (converted to a universal checkpoint)


@pytest.mark.multiproc
def test_export_loads_into_the_evaluation_path(digits_shards, tmp_path):
    run_cmd(train_cmd(CFG, *args(digits_shards, tmp_path, "ds", "dist.strategy=deepspeed", "dist.zero_stage=3"),
                      nproc=2))
    rdir = tmp_path / "runs/ds"
    out = run_cmd([PY, ROOT / "jobs/export.py", rdir])
    exported = out.stdout.split()[-1]
    cfg = C.load(rdir / "config.yaml")
    model = models.create_model(cfg.model, num_classes=10, in_chans=3, img_size=16)
    models.load_pretrained(model, exported, num_classes=10)
    # the exported weights give the run's own test accuracy through the engine's evaluation
    from imgtrain import tasks
    from imgtrain.data import build_split, dataset_info, resolve_norm
    from imgtrain.engine.dist import DistEnv
    from imgtrain.engine.evaluate import evaluate
    info = dataset_info(cfg)
    task = tasks.build(cfg.task, info.num_outputs)
    mean, std = resolve_norm(cfg.data, None, info.manifest, False)
    test = build_split(cfg, info, "test", task, train=False, mean=mean, std=std)
    metrics, _ = evaluate(model, test, task, batch=32, num_workers=0, env=DistEnv())
    assert metrics["acc1"] == json.loads((rdir / "test_results.json").read_text())["metrics"]["acc1"]


def test_conflicting_pass_through_key_fails_before_launch(digits_shards, tmp_path):
    proc = run_cmd([PY, ROOT / "jobs/train.py", "--config", CFG, *args(digits_shards, tmp_path, "x"),
                    "dist.strategy=deepspeed", "dist.deepspeed.train_micro_batch_size_per_gpu=3", "--dry-run"],
                   check=False)
    assert proc.returncode == 2
    assert "dist.deepspeed.train_micro_batch_size_per_gpu=3 conflicts with data.batch_size" in proc.stderr
    ok = run_cmd([PY, ROOT / "jobs/train.py", "--config", CFG, *args(digits_shards, tmp_path, "x"),
                  "dist.strategy=deepspeed", "dist.deepspeed={zero_optimization: {reduce_bucket_size: 1000000}}",
                  "--dry-run"])
    assert "reduce_bucket_size: 1000000" in ok.stdout
