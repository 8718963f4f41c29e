"""Issue 21: with data.global_batch a run resumed at another world size (2 -> 1 -> 2 ranks, torchrun + gloo on
CPU) sees the same samples in the same global batches, follows the same learning-rate schedule, logs the same
train losses and ends with the same weights as the run that was never interrupted."""
import json
import time

import pytest
import torch

from conftest import ROOT, run_cmd, train_cmd
from imgtrain import config as C
from imgtrain.data.order import micro_batches, split_global_batch
from imgtrain.engine.state import regroup_windows
from imgtrain.logs import read_metrics

CFG = ROOT / "tests/configs/tiny_digits.yaml"
GLOBAL, MICRO = 32, 16  # 2 ranks: 16 x 1 per rank; 1 rank: 16 x 2 accumulated


def test_split_global_batch():
    assert split_global_batch(32, 2, 16) == (16, 1)
    assert split_global_batch(32, 1, 16) == (16, 2)
    assert split_global_batch(48, 4, 5) == (4, 3)  # 12 per rank in 3 equal micro-batches of 4 (not 5+5+2)
    assert split_global_batch(7, 1, 64) == (7, 1)
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        split_global_batch(32, 3, 16)
    cfg = C.from_dict({"data": {"path": "x", "batch_size": 8, "global_batch": 64}})
    assert micro_batches(cfg, 4) == (8, 2) and micro_batches(cfg, 8) == (8, 1)
    plain = C.from_dict({"data": {"path": "x", "batch_size": 8}, "trainer": {"grad_accum": 3}})
    assert micro_batches(plain, 4) == (8, 3)
    with pytest.raises(C.ConfigError, match="trainer.grad_accum=2.*data.global_batch=64"):
        C.from_dict({"data": {"path": "x", "global_batch": 64}, "trainer": {"grad_accum": 2}})
    # the world size is no part of the run: an added key at its default keeps every earlier hash
    assert C.config_hash(C.from_dict({"data": {"path": "x"}})) == C.config_hash(
        C.from_dict({"data": {"path": "x", "global_batch": None}}))


def test_regroup_windows_keeps_the_mean_loss_and_the_counts():
    saved = [{"loss": 6.0, "n": 3, "images": 48, "bad": 1, "correct": 20.0},
             {"loss": 3.0, "n": 3, "images": 48, "bad": 0, "correct": 22.0}]  # 3 steps of 1 micro-batch, 2 ranks
    mine = regroup_windows(saved, accum_before=1, accum_now=2, rank=0)
    assert mine["n"] == 6 and mine["loss"] / mine["n"] == pytest.approx((2.0 + 1.0) / 2)
    assert (mine["images"], mine["bad"], mine["correct"]) == (96, 1, 42.0)
    other = regroup_windows(saved, 1, 2, rank=1)
    assert other["loss"] / other["n"] == pytest.approx(1.5) and other["images"] == 0
    assert regroup_windows([None, None], 1, 1, 0) is None


def steps_of(trace_prefix, world: int, accum: int, first_step: int) -> dict[int, list[int]]:
    """step -> the sorted sample indices all ranks trained on in it, from the per-rank traces of one attempt."""
    steps: dict[int, list[int]] = {}
    for rank in range(world):
        lines = open(f"{trace_prefix}.rank{rank}").read().splitlines()
        assert len(lines) % accum == 0
        for k, line in enumerate(lines):
            epoch, *index = map(int, line.split())
            steps.setdefault(first_step + k // accum, []).extend(index)
    return {s: sorted(v) for s, v in steps.items()}


def train_rows(rdir, metric: str) -> dict[int, float]:
    t = read_metrics(rdir).to_pylist()
    return {r["step"]: r["value"] for r in t if r["split"] == "train" and r["metric"] == metric}


@pytest.mark.slow
@pytest.mark.multiproc
def test_resume_2_1_2_ranks_sees_the_same_global_batches(digits_shards, tmp_path):
    common = [f"data.path={digits_shards}", f"data.global_batch={GLOBAL}", f"data.batch_size={MICRO}",
              "trainer.epochs=2", "trainer.log_every_steps=1", "output.run=elastic"]
    ref = tmp_path / "ref"
    run_cmd(train_cmd(CFG, *common, f"output.root={ref}", nproc=2),
            env={"IMGTRAIN_TEST_TRACE_SAMPLES": str(tmp_path / "ref")})
    ref_dir = ref / "runs/elastic"
    per_epoch = len(train_rows(ref_dir, "loss")) // 2
    reference = steps_of(tmp_path / "ref", 2, 1, 0)
    assert len(reference) == 2 * per_epoch and all(len(v) == GLOBAL for v in reference.values())

    # 2 ranks until step 10, 1 rank (2 accumulated micro-batches) until step per_epoch + 5 (into epoch 2), 2 ranks
    el = tmp_path / "el"
    plan = [(2, 1, 0, 10), (1, 2, 10, per_epoch + 5), (2, 1, per_epoch + 5, None)]
    got: dict[int, list[int]] = {}
    for i, (world, accum, first, stop) in enumerate(plan):
        env = {"IMGTRAIN_TEST_TRACE_SAMPLES": str(tmp_path / f"el{i}")}
        if stop:
            env["IMGTRAIN_TEST_SIGNAL_AT_STEP"] = str(stop)
        proc = run_cmd(train_cmd(CFG, *common, f"output.root={el}", nproc=world), env=env, check=stop is None)
        if stop:
            assert proc.returncode == (75 if world == 1 else 1), proc.stderr[-3000:]
        got.update(steps_of(tmp_path / f"el{i}", world, accum, first))
    el_dir = el / "runs/elastic"
    run = json.loads((el_dir / "run.json").read_text())
    assert [(a["status"], a["world_size"]) for a in run["attempts"]] == [("STOPPED", 2), ("STOPPED", 1), ("DONE", 2)]
    log = proc.stdout + proc.stderr
    assert got == reference  # the same samples in the same global batches, step by step

    lr_ref, lr_el = train_rows(ref_dir, "lr"), train_rows(el_dir, "lr")
    assert lr_el.keys() == lr_ref.keys() and all(lr_el[s] == pytest.approx(lr_ref[s], abs=1e-12) for s in lr_ref)
    loss_ref, loss_el = train_rows(ref_dir, "loss"), train_rows(el_dir, "loss")
    assert loss_el.keys() == loss_ref.keys()
    worst = max(abs(loss_el[s] - loss_ref[s]) for s in loss_ref)
    assert worst < 1e-5, worst
    a = torch.load(ref_dir / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(el_dir / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert "world size changed 1 -> 2" in log and "the same global batch of 32 (now 16 x 1" in log
    from imgtrain.analysis import analyze
    result = analyze(el, plots=False)
    assert f"elastic: world size changed between attempts, 2 -> 1 -> 2 (run.json)" in result.notes
    assert result.board.column("note").to_pylist() == ["world size 2 -> 1 -> 2"]
    print(f"elastic 2 -> 1 -> 2: largest train-loss difference {worst:.2e} over {len(loss_ref)} steps")


@pytest.mark.slow
@pytest.mark.multiproc
def test_deepspeed_zero2_resumed_on_fewer_ranks_through_a_universal_checkpoint(digits_shards, tmp_path):
    """ZeRO-2 saved by 2 ranks, resumed on 1: converted to DeepSpeed's universal checkpoint (logged) and continued
    with the same global batches as the uninterrupted 2-rank run."""
    common = [f"data.path={digits_shards}", f"data.global_batch={GLOBAL}", f"data.batch_size={MICRO}",
              "trainer.epochs=1", "trainer.log_every_steps=1", "output.run=ds", "dist.strategy=deepspeed",
              "dist.zero_stage=2", "optim.name=adamw", "optim.lr=0.003"]  # ds_to_universal reads Adam states
    run_cmd(train_cmd(CFG, *common, f"output.root={tmp_path / 'ref'}", nproc=2),
            env={"IMGTRAIN_TEST_TRACE_SAMPLES": str(tmp_path / "ref")})
    reference = steps_of(tmp_path / "ref", 2, 1, 0)
    root = tmp_path / "el"
    stopped = run_cmd(train_cmd(CFG, *common, f"output.root={root}", nproc=2), check=False,
                      env={"IMGTRAIN_TEST_SIGNAL_AT_STEP": "10", "IMGTRAIN_TEST_TRACE_SAMPLES": str(tmp_path / "el0")})
    assert stopped.returncode == 1, stopped.stderr[-3000:]  # torchrun's 1 for the workers' 75
    done = run_cmd(train_cmd(CFG, *common, f"output.root={root}"),
                   env={"IMGTRAIN_TEST_TRACE_SAMPLES": str(tmp_path / "el1")})
    assert "was saved by 2 ranks under ZeRO-2, this attempt has 1: converted to DeepSpeed's universal " \
           "checkpoint" in done.stdout, done.stdout[-3000:]
    got = {**steps_of(tmp_path / "el0", 2, 1, 0), **steps_of(tmp_path / "el1", 1, 2, 10)}
    assert got == reference
    rdir = root / "runs/ds"
    assert [(a["status"], a["world_size"]) for a in json.loads((rdir / "run.json").read_text())["attempts"]] == \
        [("STOPPED", 2), ("DONE", 1)]
    loss_ref, loss_el = train_rows(tmp_path / "ref/runs/ds", "loss"), train_rows(rdir, "loss")
    assert loss_el.keys() == loss_ref.keys() and max(abs(loss_el[s] - loss_ref[s]) for s in loss_ref) < 1e-5
    assert not list((rdir / "checkpoints/deepspeed").glob("universal-*"))  # removed by the next save


# ------------------------------------------------------------------ through SLURM: 2 nodes, requeued onto 1
from test_slurm import CONFIG, TINY, ava_shards, run_json, submit, submitted, the_run_dir  # noqa: E402,F401

SLURM_GLOBAL, SLURM_STOP, SLURM_EPOCHS = 8, 3, 2  # 43 samples: 5 steps of 8 per epoch, 10 steps


def trace_steps(path, accums: list[tuple[int, int]]) -> dict[int, list[int]]:
    """step -> sample indices of one rank's trace written by consecutive attempts: accums = [(steps, accum)]."""
    lines, steps, at = open(path).read().splitlines(), {}, 0
    first = 0
    for count, accum in accums:
        for k in range(count * accum):
            steps.setdefault(first + k // accum, []).extend(map(int, lines[at + k].split()[1:]))
        at, first = at + count * accum, first + count
    assert at == len(lines), (at, len(lines))
    return steps


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_node_job_requeued_onto_one_node_keeps_the_global_batches(submitted, slurm_multinode, ava_shards,  # noqa: F811
                                                                     tmp_path):
    """`sbatch --nodes=2`: the first attempt runs on node1 + node2 and stops after step 3 (the trainer's test
    hook); node2 is drained meanwhile and the pending requeued job is changed to 1 node, so the next attempt
    runs on node1 alone: 1 rank, 2 accumulated micro-batches per step. Every step trains on the samples of the uninterrupted 2-rank run."""
    common = [f"data.path={ava_shards}", *TINY, f"data.global_batch={SLURM_GLOBAL}", f"trainer.epochs={SLURM_EPOCHS}"]
    ref = tmp_path / "ref"
    run_cmd(train_cmd(CONFIG, *common, f"output.root={ref}", nproc=2),
            env={"IMGTRAIN_TEST_TRACE_SAMPLES": str(tmp_path / "ref")})
    reference = {s: sorted(v) for s, v in steps_of(tmp_path / "ref", 2, 1, 0).items()}

    trace = tmp_path / "el"
    job = submit(submitted, slurm_multinode, tmp_path, *common, f"output.root={tmp_path / 'el-root'}",
                 sbatch=["--nodes=2"], env={"IMGTRAIN_TEST_SIGNAL_AT_STEP": str(SLURM_STOP),
                                              "IMGTRAIN_TEST_TRACE_SAMPLES": str(trace),
                                              "IMGTRAIN_TRAIN_ENTRY": "tests/hooked_train.py"})
    deadline = time.monotonic() + 180
    while slurm_multinode.squeue_states(job.id).get(str(job.id)) != "RUNNING":  # allocated both nodes
        assert time.monotonic() < deadline, job.logs()
        time.sleep(0.2)
    slurm_multinode.run(["scontrol", "update", "nodename=node2", "state=drain", "reason=elastic-test"])
    try:
        # the job requeues itself after step 3 and waits for 2 nodes; as a scheduler would hand it what is free,
        # the pending job is given 1 node
        while slurm_multinode.squeue_states(job.id).get(str(job.id)) != "PENDING":
            assert time.monotonic() < deadline + 240, job.logs()
            time.sleep(0.2)
        slurm_multinode.run(["scontrol", "update", f"jobid={job.id}", "NumNodes=1", "NumTasks=1"])
        assert job.wait(timeout=420) == "COMPLETED", job.logs()
    finally:
        slurm_multinode.run(["scontrol", "update", "nodename=node2", "state=resume"], check=False)
    rdir = the_run_dir(tmp_path / "el-root")
    attempts = run_json(rdir)["attempts"]
    assert [(a["status"], a["world_size"], a["slurm"]["node_list"]) for a in attempts] == \
        [("STOPPED", 2, "node[1-2]"), ("DONE", 1, "node1")], attempts
    total = len(reference)
    got = trace_steps(f"{trace}.rank0", [(SLURM_STOP, 1), (total - SLURM_STOP, 2)])
    for s, index in trace_steps(f"{trace}.rank1", [(SLURM_STOP, 1)]).items():
        got[s].extend(index)
    assert {s: sorted(v) for s, v in got.items()} == reference
    out = job.out.read_text()
    assert "world size changed 2 -> 1" in out and f"the same global batch of {SLURM_GLOBAL} (now 4 x 2" in out
    a = torch.load(the_run_dir(ref) / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(rdir / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
