"""dist.strategy=deepspeed through the SLURM launcher and through sweeps (issue 9), on the real test
clusters (tests/cluster): `sbatch slurm/ava_vit.sbatch dist.strategy=deepspeed dist.zero_stage=2` on two
nodes (one process each) is stopped by USR1 mid-epoch, requeues itself and resumes, and ends with the
weights of an uninterrupted DeepSpeed run at the same world size; a sweep cell with 2 submitit tasks
trains under DeepSpeed across the two nodes. On CPU nothing is compiled or loaded from a build cache
(deepspeed_strategy skips the shm op, DeepSpeed gets our torch optimizer)."""
import json

import pytest
import torch
import yaml

from conftest import PY, ROOT, run_cmd, train_cmd
from imgtrain.engine.deepspeed_strategy import consolidated_state_dict
from imgtrain.sweep.records import SweepDir
from test_slurm import CONFIG, TINY, ava_shards, run_json, submit, submitted, the_run_dir  # noqa: F401

pytestmark = pytest.mark.slow

DS = ["dist.strategy=deepspeed", "dist.zero_stage=2"]
EPOCHS = 2  # 2 ranks x batch 4: 5 steps per epoch, 10 steps
STOP_AT = 3  # mid-epoch
COMPILING = ("torch_extensions", "Building extension", "Loading extension module")  # cpp_extension's JIT lines


def ds_weights(rdir):
    ds = rdir / "checkpoints/deepspeed"
    return consolidated_state_dict(ds, (ds / "last").read_text().strip())


@pytest.fixture(scope="module")
def ds_reference(ava_shards, tmp_path_factory):  # noqa: F811
    """The final weights of the same run without interruption: torchrun on one host, 2 processes."""
    root = tmp_path_factory.mktemp("ds-reference")
    run_cmd(train_cmd(CONFIG, f"data.path={ava_shards}", *TINY, *DS, f"trainer.epochs={EPOCHS}",
                      f"output.root={root}", nproc=2))
    return ds_weights(the_run_dir(root))


@pytest.mark.multiproc
def test_deepspeed_on_two_nodes_preempted_and_resumed_exactly(submitted, slurm_multinode, ava_shards,  # noqa: F811
                                                              tmp_path, ds_reference):
    """The USR1 comes from the trainer's test hook (rank 0 on node1 signals itself after step 3): a
    ViT step takes a fraction of a second, too short to aim a signal from outside at the middle of a
    10-step run; the batch-shell path is the same for every strategy (test_slurm.py covers it on two
    nodes). The worker that saw it tells the other at the step boundary, both save, the job requeues."""
    extensions = tmp_path / "torch_extensions"  # an op JIT-built (or loaded from a cache) would be found here
    job = submit(submitted, slurm_multinode, tmp_path, f"data.path={ava_shards}", f"output.root={tmp_path}", *TINY,
                 *DS, f"trainer.epochs={EPOCHS}", sbatch=["--nodes=2"],
                 env={"TORCH_EXTENSIONS_DIR": str(extensions), "IMGTRAIN_TEST_SIGNAL_AT_STEP": str(STOP_AT),
                      "IMGTRAIN_TRAIN_ENTRY": "tests/hooked_train.py"})
    assert job.wait(timeout=300) == "COMPLETED", job.logs()
    rdir = the_run_dir(tmp_path)
    info = run_json(rdir)
    assert (rdir / "DONE").exists() and info["world_size"] == 2 and info["hosts"] == ["node1", "node2"]
    assert [(a["status"], a["exit"]) for a in info["attempts"]] == [("STOPPED", 75), ("DONE", 0)], info["attempts"]
    out, err = job.out.read_text(), job.err.read_text()
    assert f"stopped by SIGUSR1 at epoch 0 step {STOP_AT};" in out and f"requeue {job.id} (scontrol requeue)" in out
    assert f"resumed {rdir.name} at epoch 0 step {STOP_AT}" in out
    tag = rdir / "checkpoints/deepspeed" / (rdir / "checkpoints/deepspeed/last").read_text().strip()
    # ZeRO-2: each rank (one per node) wrote its optimizer partition into the shared run directory
    assert sorted(p.name for p in tag.glob("*optim_states.pt")) == [
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    assert not extensions.exists() and not [w for w in COMPILING if w in out + err], err[-3000:]
    final = ds_weights(rdir)
    different = [k for k in ds_reference if not torch.equal(final[k], ds_reference[k])]
    assert final.keys() == ds_reference.keys() and not different, \
        f"{len(different)} tensors differ from the uninterrupted run; attempts: {info['attempts']}{job.logs()}"


@pytest.mark.multiproc
def test_deepspeed_sweep_cell_with_two_submitit_tasks_across_two_nodes(slurm_multinode, digits_shards, tmp_path):
    """jobs/sweep.py submits the cell as a submitit array task with 2 tasks (one per node); the trainer takes
    rank and world size from submitit's TorchDistributedEnvironment. No accounting on this cluster: the
    run directory, not sacct, says DONE."""
    root = tmp_path / "root"
    spec = tmp_path / "ds.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "dsweep", "config": str(ROOT / "tests/configs/tiny_digits.yaml"),
        "overrides": {"data.path": str(digits_shards), "trainer.epochs": 1, "trainer.max_steps": 10,
                      "dist.strategy": "deepspeed", "dist.zero_stage": 2},
        "grid": {"optim.lr": [0.05]},
        "resources": {"nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, "time": 10}}))
    extensions = tmp_path / "torch_extensions"
    proc = slurm_multinode.run([PY, ROOT / "jobs/sweep.py", spec, "--root", root, "--partition",
                                slurm_multinode.partition, "--no-preflight"], timeout=120, cwd=ROOT,
                               env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert "submitted 1 cell as SLURM" in proc.stdout, proc.stdout + proc.stderr
    job = SweepDir(root, "dsweep").submissions()[-1]["job_ids"][0]
    state = slurm_multinode.wait_job(job, timeout=240)
    rdir = next((root / "runs").iterdir())
    info = json.loads((rdir / "run.json").read_text())
    logs = "".join(p.read_text() for p in sorted((root / "sweeps/dsweep").rglob("*_log.*")))
    assert state == "COMPLETED" and (rdir / "DONE").exists(), logs[-4000:]
    assert info["world_size"] == 2 and info["hosts"] == ["node1", "node2"], info
    assert (rdir / "checkpoints/deepspeed/last").exists()
    assert "2 rank(s)" in logs and "hostname=node2" in logs
    assert not extensions.exists() and not [w for w in COMPILING if w in logs]
