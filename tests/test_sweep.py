"""Sweeps (jobs/sweep.py, imgtrain.sweep): spec validation and expansion, stable cell ids, idempotent
submission on the local executor, a real SLURM job array with one task requeued by hand and one stopped
by SIGUSR1 (its time-limit warning), cancel, and successive halving checked against the Parquet logs."""
import json
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import PY, ROOT, run_cmd
from imgtrain import config as C
from imgtrain.logs import mark_failed, read_metrics, read_run, read_status
from imgtrain.sweep import spec as S
from imgtrain.sweep.records import SweepDir

CFG = ROOT / "tests/configs/tiny_digits.yaml"
SWEEP = [PY, ROOT / "jobs/sweep.py"]


def write_spec(path: Path, **spec) -> Path:
    spec.setdefault("config", str(CFG))
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny(data, **extra):
    """Shared overrides for fast cells on the 16 px digits."""
    return {"data.path": str(data), "trainer.epochs": 1, "data.batch_size": 64, **extra}


def attempts(run_dir):
    return [(a["status"], (a.get("slurm") or {}).get("restart_count")) for a in read_run(run_dir)["attempts"]]


def train_loss_steps(run_dir):
    t = read_metrics(run_dir)
    t = t.filter(pc.and_(pc.equal(t["split"], "train"), pc.equal(t["metric"], "loss")))
    return t.column("step").to_pylist()


def counts_line(text):
    return next(line for line in text.splitlines() if "(total" in line)


# ----------------------------------------------------------------------------------------- spec

BAD_SPECS = [
    ({"grid": {"optim.nme": ["sgd"]}}, ["unknown config key 'optim.nme'", "did you mean 'optim.name'"]),
    ({"grid": {"optim.lr": [0.1, "fast"]}}, ["cell optim.lr=fast", "optim.lr: expected float", "grid"]),
    ({"grid": {"optim.name": ["sgd", "adamm"]}}, ["cell optim.name=adamm", "optim.name: 'adamm' is not an optimizer timm knows"]),
    ({"grid": {}}, ["empty grid"]),
    ({"grid": {"optim.name": []}}, ["grid.optim.name: empty list"]),
    ({"grid": {"optim.name": "sgd"}}, ["grid.optim.name: expected a list"]),
    ({"zip": {"optim.name": ["sgd", "adam"], "optim.lr": [0.1]}},
     ["equal lengths", "optim.name (2)", "optim.lr (1)"]),
    ({"grids": {"optim.name": ["sgd"]}}, ["unknown sweep key 'grids'", "did you mean 'grid'"]),
    ({"grid": {"optim.name": ["sgd"]}, "exclude": [{"model.widht": [8]}]},
     ["unknown config key 'model.widht'", "exclude[0]"]),
    ({"grid": {"optim.name": ["sgd"]}, "resources": {"gpus": 1}}, ["unknown resource 'gpus'"]),
    ({"grid": {"trainer.epochs": [1, 2]}, "schedule": "halving", "rungs": [1, 2]}, ["trainer.epochs", "halving"]),
    ({"grid": {"optim.name": ["sgd"]}, "schedule": "halving", "rungs": [2, 1]}, ["rungs must increase"]),
]


@pytest.mark.parametrize("spec, words", BAD_SPECS)
def test_spec_errors_name_the_key(tmp_path, spec, words):
    path = write_spec(tmp_path / "bad.yaml", name="bad", overrides={"data.path": "/nowhere"}, **spec)
    with pytest.raises(C.ConfigError) as e:
        S.load_spec(path, root=str(tmp_path))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_spec_error_on_the_command_line_submits_nothing(tmp_path):
    path = write_spec(tmp_path / "bad.yaml", name="bad", overrides={"data.path": "/nowhere"},
                      grid={"optim.name": ["sgd", "adam"], "optim.lr": [0.1, "fast"]})
    proc = run_cmd([*SWEEP, path, "--executor", "local", "--root", tmp_path / "out"], check=False)
    assert proc.returncode == 2
    assert "optim.lr" in proc.stderr and "fast" in proc.stderr
    assert not (tmp_path / "out").exists()  # no runs, no sweep records
    # a command-line override of a key the grid varies is refused too
    good = write_spec(tmp_path / "good.yaml", name="good", grid={"optim.lr": [0.1, 0.2]})
    proc = run_cmd([*SWEEP, good, "data.path=/x", "optim.lr=0.3", "--dry-run"], check=False)
    assert proc.returncode == 2 and "optim.lr" in proc.stderr and "varies between cells" in proc.stderr


def test_expansion_and_stable_ids(tmp_path):
    common = dict(name="exp", overrides={"data.path": "/data", "trainer.epochs": 3})
    a = S.build(dict(config=str(CFG), **common,
                     grid={"optim.name": ["sgd", "adam"], "optim.lr": [1, 0.1]},
                     zip={"model.width": [[8], [16, 8]], "model.depth": [1, 2]},
                     exclude=[{"optim.name": "adam", "model.depth": 2}],
                     include=[{"optim.name": "rmsprop"}],
                     seeds=[0, 1]), root=str(tmp_path))
    # 2 x 2 x 2 = 8 grid cells, minus the 2 (adam, depth 2) ones, plus 1 include; x 2 seeds
    assert len(a.cells) == (8 - 2 + 1) * 2
    assert {c.values["trainer.seed"] for c in a.cells} == {0, 1}
    assert not any(c.values.get("optim.name") == "adam" and c.values.get("model.depth") == 2 for c in a.cells)
    assert [c.values for c in a.cells if c.origin == "include"] == [{"optim.name": "rmsprop", "trainer.seed": 0},
                                                                   {"optim.name": "rmsprop", "trainer.seed": 1}]
    assert set(a.axes) >= {"optim.name", "optim.lr", "model.width", "model.depth", "trainer.seed"}
    # values are typed by the config schema (optim.lr: 1 -> 1.0); ids do not depend on key order or int/float
    assert {c.values["optim.lr"] for c in a.cells if "optim.lr" in c.values} == {1.0, 0.1}
    b = S.build(dict(config=str(CFG), seeds=[1, 0],
                     include=[{"optim.name": "rmsprop"}],
                     exclude=[{"model.depth": 2, "optim.name": "adam"}],
                     zip={"model.depth": [1, 2], "model.width": [[8], [16, 8]]},
                     grid={"optim.lr": [1.0, 0.1], "optim.name": ["sgd", "adam"]}, **common), root=str(tmp_path))
    assert {c.id for c in a.cells} == {c.id for c in b.cells}
    assert len({c.id for c in a.cells}) == len(a.cells)
    for c in a.cells:
        assert c.run_id == f"exp-{c.id}" and c.id == S.cell_hash(c.values)
        # what a job builds from (config path, overrides) is exactly the cell's config
        cfg = C.load(a.config_path, c.overrides)
        assert cfg == c.config and C.config_hash(cfg) == c.config_hash
        assert (cfg.output.run, cfg.output.sweep, cfg.output.cell) == (c.run_id, "exp", c.id)
        assert cfg.output.root == str(tmp_path) and cfg.trainer.epochs == 3
    # adding a grid value adds cells and keeps the others' ids
    c3 = S.build(dict(config=str(CFG), **common, grid={"optim.name": ["sgd", "adam", "adamw"]}), root=str(tmp_path))
    c2 = S.build(dict(config=str(CFG), **common, grid={"optim.name": ["sgd", "adam"]}), root=str(tmp_path))
    assert {c.id for c in c2.cells} < {c.id for c in c3.cells}
    # without seeds:, trainer.seed still counts (from the base config), so adding seeds: [0] changes nothing
    c2s = S.build(dict(config=str(CFG), **common, grid={"optim.name": ["sgd", "adam"]}, seeds=[0]),
                  root=str(tmp_path))
    assert [c.id for c in c2s.cells] == [c.id for c in c2.cells]


def test_resources_per_sweep_and_per_cell(tmp_path):
    from imgtrain.sweep.executors import executor_parameters
    sw = S.build(dict(config=str(CFG), name="res", overrides={"data.path": "/data"},
                      zip={"model.name": ["resnet18", "vit_small_patch16_224"], "resources.gpus_per_node": [1, 4]},
                      resources={"partition": "gpu", "account": "proj", "qos": "high", "time": "1-00:00:00",
                                 "cpus_per_task": 8, "mem_gb": 32, "nodes": 2}), root=str(tmp_path))
    small, big = sw.cells
    # resources are not config: they do not change the cell id (a cell keeps its run when moved to bigger GPUs)
    assert small.values == {"model.name": "resnet18", "trainer.seed": 0}
    assert "resources.gpus_per_node=4" in big.describe()
    p1, p4 = executor_parameters(small.resources, "res"), executor_parameters(big.resources, "res")
    assert p1["gpus_per_node"] == 1 and p1["tasks_per_node"] == 1
    assert p4["gpus_per_node"] == 4 and p4["tasks_per_node"] == 4  # one submitit task (DDP rank) per GPU
    for p in (p1, p4):
        assert (p["slurm_partition"], p["slurm_account"], p["slurm_qos"]) == ("gpu", "proj", "high")
        assert (p["nodes"], p["cpus_per_task"], p["mem_gb"], p["timeout_min"]) == (2, 8, 32, 1440)
        assert p["slurm_additional_parameters"]["signal"] == "USR1@120"  # the trainer's stop, before the limit
        assert p["slurm_additional_parameters"]["requeue"] is True
        assert p["name"] == "sweep_res"
    # a short job gets its warning at half its time at the latest
    assert executor_parameters({"time": 2}, "x")["slurm_additional_parameters"]["signal"] == "USR1@60"


def test_dry_run_of_1000_cells_is_fast(digits_shards, tmp_path):
    path = write_spec(tmp_path / "big.yaml", name="big", overrides={"data.path": str(digits_shards)},
                      grid={"optim.lr": [round(0.001 * (i + 1), 4) for i in range(10)],
                            "optim.weight_decay": [i / 100 for i in range(10)]},
                      seeds=list(range(10)))
    t0 = time.time()
    proc = run_cmd([*SWEEP, path, "--dry-run", "--root", tmp_path / "out"])
    elapsed = time.time() - t0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("sweep big: 1000 cells")
    assert lines[1].split() == ["cell", "run", "id", "status", "config", "hash", "overrides"]
    rows = [line.split() for line in lines[2:-2]]  # then the counts and the preflight's line
    assert len(rows) == 1000 and len({r[0] for r in rows}) == 1000
    assert all(r[1] == f"big-{r[0]}" and r[2] == "new" and len(r[3]) == 12 for r in rows)
    assert counts_line(proc.stdout).startswith("new 1000 ")
    assert lines[-1].startswith("preflight: ok for the 1000 cell(s)")  # what a submission would check
    assert elapsed < 10, f"dry-run of 1000 cells took {elapsed:.1f}s"
    assert not (tmp_path / "out").exists()


def test_preflight_failure_submits_nothing(tmp_path, capsys):
    from imgtrain.sweep.cli import main
    path = write_spec(tmp_path / "p.yaml", name="pre", overrides={"data.path": str(tmp_path / "no-such-set")},
                      grid={"optim.lr": [0.1, 0.2]})
    assert main([str(path), "--executor", "local", "--root", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "preflight failed, nothing submitted" in err and "data.path" in err and "no-such-set" in err
    assert not (tmp_path / "out/runs").exists() and SweepDir(tmp_path / "out", "pre").submissions() == []


def test_preflight_catches_what_the_trainer_would_and_agrees_with_it(digits_shards, tmp_path):
    """Each kind of start-up failure, found by the sweep's engine-free preflight with the trainer's own
    words; the trainer's preflight (torch, timm) flags the same configs and passes the same good ones."""
    from imgtrain.engine.cli import preflight as trainer_preflight
    from imgtrain.sweep.preflight import check_config
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "manifest.json").write_text("{not json")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    base = [f"data.path={digits_shards}"]
    bad = {
        "data.path": ([f"data.path={tmp_path / 'no-such-set'}"], ["data.path:", "no-such-set", "cannot read"]),
        "manifest": ([f"data.path={bad_json}"], ["data.path:", "not valid JSON"]),
        "task": (["task.name=score_distribution"], ["holds a 'classification' data set but task.name is"]),
        "split": (["data.train_split=nope"], ["data.train_split:", "has no split 'nope'"]),
        "model": (["model.name=resnet5O"], ["unknown model 'resnet5O'", "close matches: resnet50"]),
        "weights": ([f"model.pretrained_path={tmp_path / 'gone.pt'}"], ["model.pretrained_path:", "is not a file"]),
        "deepspeed": (["dist.strategy=deepspeed", "dist.zero_stage=2", "dist.offload_params=true"],
                      ["dist.offload_params needs dist.zero_stage=3"]),
    }
    for what, (overrides, words) in bad.items():
        cfg = C.load(CFG, base + overrides)
        ours, theirs = check_config(cfg), trainer_preflight(cfg)
        assert len(ours) == 1 and all(w in ours[0] for w in words), (what, ours)
        assert theirs, (what, "the trainer's preflight passes what ours rejects")
    # a local model, timm names (with a pretrained tag; a deprecated alias the source index lacks, so the
    # real registry is asked), a readable weights file and a valid DeepSpeed config all pass
    for overrides in ([], ["model.name=resnet18.a1_in1k"], ["model.name=convnext_tiny_in22ft1k"],
                      ["model.name=simple_cnn", f"model.pretrained_path={weights}"],
                      ["dist.strategy=deepspeed", "dist.zero_stage=3", "dist.offload_params=true"]):
        cfg = C.load(CFG, base + overrides)
        assert check_config(cfg) == [] and trainer_preflight(cfg) == [], overrides


def test_preflight_imports_no_engine(digits_shards, tmp_path):
    """The default submission path's preflight reads files only: no torch, timm or scikit-learn
    (benchmarks/sweep_scale.py times it on 1,000 cells)."""
    script = ("import sys, json; sys.path.insert(0, sys.argv[1])\n"
              "from imgtrain.sweep.spec import load_spec\nfrom imgtrain.sweep.executors import preflight\n"
              "cells = load_spec(sys.argv[2], root=sys.argv[3]).cells\n"
              "problems = preflight(cells)\n"
              "heavy = sorted(m for m in ('torch', 'timm', 'sklearn', 'imgtrain.engine') if m in sys.modules)\n"
              "print(json.dumps([len(cells), problems[:1], len(problems), heavy]))")

    def check(names):
        path = write_spec(tmp_path / "big.yaml", name="big", overrides={"data.path": str(digits_shards)},
                          grid={"optim.lr": [0.001 * (i + 1) for i in range(10)], "model.name": names},
                          seeds=[0, 1])
        return json.loads(run_cmd([PY, "-c", script, ROOT, path, tmp_path / "root"]).stdout.splitlines()[-1])

    assert check(["mlp", "simple_cnn", "resnet18", "vit_tiny_patch16_224"]) == [80, [], 0, []]
    # a typo is the one case that asks the real registry (for its close matches), importing timm then
    n, first, count, heavy = check(["mlp", "simple_cnn", "resnet18", "no_such_net"])
    assert (n, count) == (80, 20) and "unknown model 'no_such_net'" in first[0] and first[0].startswith("cell ")
    assert "timm" in heavy and "imgtrain.engine" not in heavy


# ----------------------------------------------------------------------------------------- local executor

@pytest.mark.multiproc
@pytest.mark.slow
def test_local_sweep_is_idempotent(digits_shards, tmp_path, capsys):
    root = tmp_path / "root"
    grid = {"optim.lr": [0.05, 0.2], "model.width": [[32], [64]]}
    path = write_spec(tmp_path / "g.yaml", name="loc", overrides=tiny(digits_shards),
                      grid=grid)
    sweep = S.load_spec(path, root=str(root))
    by_values = {json.dumps(c.values, sort_keys=True): c for c in sweep.cells}
    args = [*SWEEP, path, "--executor", "local", "--root", root]

    # 1. all four cells run to DONE, each in <root>/runs/<name>-<cell id>, with the dry-run's config hash
    proc = run_cmd([*args, "--parallel", "4", "--no-preflight"], timeout=400)
    assert "submitting 4 cells (4 new)" in proc.stdout
    for c in sweep.cells:
        rdir = root / "runs" / c.run_id
        assert read_status(rdir) == "DONE", (rdir, proc.stdout)
        info = read_run(rdir)
        assert (info["sweep"], info["cell"], info["config_hash"]) == ("loc", c.id, c.config_hash)
        assert (root / "sweeps/loc/logs" / f"{c.run_id}.log").is_file()
    records = SweepDir(root, "loc")
    assert len(records.submissions()) == 1

    # 2. the same command again submits nothing (from here on the CLI runs in this process, and the
    #    debug executor trains in it too: the same selection logic without a process start-up per cell)
    from imgtrain.sweep.cli import main
    capsys.readouterr()
    assert main([str(a) for a in args[2:]]) == 0
    assert "nothing to submit; skipping 4 done" in capsys.readouterr().out
    assert len(records.submissions()) == 1

    # 3. a cell without its DONE marker resumes (and only it), a FAILED cell waits for --retry-failed,
    #    a new grid value adds only its new cells
    redo, failed = sweep.cells[0], sweep.cells[1]
    (root / "runs" / redo.run_id / "DONE").unlink()
    (root / "runs" / failed.run_id / "DONE").unlink()
    mark_failed(root / "runs" / failed.run_id, "RuntimeError: node died (simulated)")
    grid["optim.lr"].append(0.5)
    write_spec(path, name="loc", overrides=tiny(digits_shards), grid=grid)
    bigger = S.load_spec(path, root=str(root))
    new = [c for c in bigger.cells if json.dumps(c.values, sort_keys=True) not in by_values]
    assert len(bigger.cells) == 6 and len(new) == 2
    assert {c.id for c in sweep.cells} < {c.id for c in bigger.cells}
    assert main([str(path), "--executor", "debug", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "submitting 3 cells (2 new, 1 to resume); skipping 2 done, 1 failed (--retry-failed" in out
    assert set(records.submissions()[-1]["cells"]) == {redo.id, *(c.id for c in new)}
    assert read_status(root / "runs" / failed.run_id) == "FAILED"
    for c in [redo, *new]:
        assert read_status(root / "runs" / c.run_id) == "DONE"
    assert attempts(root / "runs" / redo.run_id) == [("DONE", None), ("DONE", None)]
    assert f"resumed {redo.run_id}" in out  # from last.pt: no step trained twice
    assert train_loss_steps(root / "runs" / redo.run_id) == list(range(1, 20))  # 1259 // 64 steps, each once
    untouched = [c for c in sweep.cells if c not in (redo, failed)]
    for c in untouched:
        assert len(read_run(root / "runs" / c.run_id)["attempts"]) == 1

    # 4. --retry-failed runs the failed cell again
    assert main([str(path), "--executor", "debug", "--root", str(root), "--retry-failed"]) == 0
    out = capsys.readouterr().out
    assert "submitting 1 cell (1 failed, retried); skipping 5 done" in out
    assert read_status(root / "runs" / failed.run_id) == "DONE"

    # 5. status: counts, and each cell's best monitored metric as its summary.parquet holds it
    assert main(["status", str(path), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert counts_line(out).startswith("new 0  pending 0  running 0  stopped 0  done 6  failed 0  pruned 0")
    for c in bigger.cells:
        row = pq.read_table(root / "runs" / c.run_id / "summary.parquet").to_pylist()[0]
        line = next(line for line in out.splitlines() if line.startswith(c.id))
        assert line.split()[2] == "done"
        assert f"{row['best']:.4f}@{row['best_epoch'] + 1}" in line, line
    # ... also by sweep name (from its records), as a command
    by_name = run_cmd([*SWEEP, "status", "loc", "--root", root])
    assert counts_line(by_name.stdout) == counts_line(out)


# ----------------------------------------------------------------------------------------- halving

@pytest.mark.slow
def test_successive_halving_prunes_the_worst(digits_shards, tmp_path, capsys):
    from imgtrain.sweep import halving
    if not halving.engine_supports_halving():
        pytest.skip("needs the engine hook trainer.stop_after_epochs (see imgtrain/sweep/halving.py)")
    from imgtrain.sweep.cli import main
    root = tmp_path / "root"
    path = write_spec(tmp_path / "h.yaml", name="halv", overrides={"data.path": str(digits_shards),
                                                                   "data.batch_size": 64},
                      grid={"optim.lr": [0.0005, 0.005, 0.05, 0.5]}, schedule="halving", rungs=[1, 2], keep=0.5)
    assert main([str(path), "--executor", "debug", "--root", str(root)]) == 0
    sweep = S.load_spec(path, root=str(root))
    assert {c.config.trainer.epochs for c in sweep.cells} == {2}
    ids = [c.run_id for c in sweep.cells]
    t = read_metrics(root, run_id=ids)
    t = t.filter(pc.and_(pc.equal(t["split"], "val"), pc.equal(t["metric"], "acc1")))
    rows = t.to_pylist()
    at_rung = {r["run_id"]: r["value"] for r in rows if r["epoch"] == 0}
    assert set(at_rung) == set(ids)
    ranked = sorted(ids, key=lambda r: (-at_rung[r], r.split("-")[-1]))
    kept = set(ranked[:2])
    for c in sweep.cells:
        rdir = root / "runs" / c.run_id
        epochs = sorted(r["epoch"] for r in rows if r["run_id"] == c.run_id)
        if c.run_id in kept:
            assert read_status(rdir) == "DONE" and epochs == [0, 1]
            assert not (rdir / "PRUNED").exists()
            assert attempts(rdir) == [("STOPPED", None), ("DONE", None)]
        else:
            assert read_status(rdir) == "INCOMPLETE" and epochs == [0]  # stopped at the rung, never resumed
            marker = json.loads((rdir / "PRUNED").read_text())
            assert marker["metric"] == "val/acc1" and marker["rung"] == 1
            assert marker["value"] == pytest.approx(at_rung[c.run_id])
            assert marker["threshold"] == pytest.approx(at_rung[ranked[1]])
            assert marker["rank"] > 2 and "below the keep threshold" in marker["reason"]
        # finished for good, DONE (by the trainer) or PRUNED (by the halving): its parts are one file
        assert [p.name.split("-")[0] for p in (rdir / "metrics").iterdir()] == ["compact"]
    capsys.readouterr()
    # visible in status; and running the sweep again changes nothing
    assert main(["status", str(path), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "done 2  failed 0  pruned 2" in counts_line(out)
    assert main([str(path), "--executor", "debug", "--root", str(root)]) == 0
    assert "training" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- SLURM

def _array_id(root, name):
    return SweepDir(root, name).submissions()[-1]["job_ids"][0]


def _wait(predicate, timeout, what, poll=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise TimeoutError(what)


# enough epochs that the signals sent once a task's first checkpoint exists land mid-run: from the in-memory
# cache tiny digits train 2 epochs in 0.6 s, and a USR1 that came as the task exited failed it
EPOCHS = 30


@pytest.mark.slow
def test_slurm_job_array_with_preempted_tasks(digits_shards, tmp_path, slurm_cluster, monkeypatch):
    slurm_cluster.activate(monkeypatch)
    root = tmp_path / "root"
    path = write_spec(tmp_path / "s.yaml", name="arr",
                      overrides=tiny(digits_shards, **{"trainer.epochs": EPOCHS, "data.batch_size": 16,
                                                       "trainer.ckpt_every_steps": 10}),
                      grid={"optim.lr": [0.05, 0.1], "model.width": [[32], [64]]}, resources={"time": 10})
    sweep = S.load_spec(path, root=str(root))
    args = [*SWEEP, path, "--root", root, "--partition", slurm_cluster.partition]
    proc = run_cmd([*args, "--no-preflight"], env=slurm_cluster.env, timeout=120)
    assert "submitted 4 cells as SLURM job array" in proc.stdout
    job = _array_id(root, "arr")
    tasks = SweepDir(root, "arr").submissions()[-1]["tasks"]
    assert sorted(tasks.values()) == [f"{job}_{i}" for i in range(4)]
    by_task = {int(t.split("_")[1]): sweep.by_id()[cid] for cid, t in tasks.items()}

    # queued or running cells are not submitted twice
    again = run_cmd(args, env=slurm_cluster.env, timeout=120)
    assert "nothing to submit" in again.stdout and len(SweepDir(root, "arr").submissions()) == 1

    # task 1: `scontrol requeue` by hand (SIGTERM); task 2: SIGUSR1 as before a time limit (it requeues itself)
    for t in (1, 2):
        ckpt = root / "runs" / by_task[t].run_id / "checkpoints/last.pt"
        _wait(ckpt.exists, 240, f"no checkpoint of task {t}")
    slurm_cluster.run(["scontrol", "requeue", f"{job}_1"])
    slurm_cluster.run(["scancel", "--signal=USR1", f"{job}_2"])

    def all_done():
        return all(read_status(root / "runs" / c.run_id) == "DONE" for c in sweep.cells)
    _wait(all_done, 300, "cells not DONE")
    slurm_cluster.wait_job(job, timeout=60, source="sacct")
    # one array job with 4 tasks; tasks 1 and 2 were requeued once, 0 and 3 were untouched
    states = slurm_cluster.sacct_states(job)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(4)}, states
    history = slurm_cluster.run(["sacct", "-n", "-X", "-P", "-D", "-j", str(job), "-o", "JobID,State"]).stdout
    requeued = sorted(line.split("|")[0] for line in history.splitlines() if "REQUEUED" in line)
    assert requeued == [f"{job}_1", f"{job}_2"], history
    for t, cell in by_task.items():
        rdir = root / "runs" / cell.run_id
        if t in (1, 2):
            assert attempts(rdir) == [("STOPPED", None), ("DONE", 1)], t
        else:
            assert attempts(rdir) == [("DONE", None)], t
        # resumed from last.pt: every step once, all EPOCHS x 78 of them
        steps = train_loss_steps(rdir)
        assert steps == list(range(1, EPOCHS * 78 + 1)), (t, steps[:5], len(steps))
    log = (Path(SweepDir(root, "arr").submissions()[-1]["folder"]) / f"{job}_2_0_log.out").read_text()
    assert f"requeued {job}_2 (restart 1)" in log and f"resumed {by_task[2].run_id}" in log
    status = run_cmd([*SWEEP, "status", path, "--root", root], env=slurm_cluster.env)
    assert counts_line(status.stdout).startswith("new 0  pending 0  running 0  stopped 0  done 4")


@pytest.mark.slow
def test_slurm_cancel(digits_shards, tmp_path, slurm_cluster, monkeypatch):
    slurm_cluster.activate(monkeypatch)
    root = tmp_path / "root"
    path = write_spec(tmp_path / "c.yaml", name="canc", overrides=tiny(digits_shards, **{"trainer.epochs": 2000}),
                      grid={"optim.lr": [0.05, 0.1, 0.2]}, resources={"time": 10})
    run_cmd([*SWEEP, path, "--root", root, "--partition", slurm_cluster.partition, "--no-preflight",
             "--array-parallelism", "1"], env=slurm_cluster.env, timeout=120)
    job = _array_id(root, "canc")
    _wait(lambda: slurm_cluster.squeue_states(job).get(f"{job}_0") == "RUNNING", 60, "task 0 not running")
    status = run_cmd([*SWEEP, "status", path, "--root", root], env=slurm_cluster.env)
    assert "running 1" in counts_line(status.stdout) and "pending 2" in counts_line(status.stdout)
    proc = run_cmd([*SWEEP, "cancel", "canc", "--root", root], env=slurm_cluster.env)
    assert f"cancelled 3 cell(s): SLURM array {job} (3 live tasks)" in proc.stdout
    slurm_cluster.wait_job(job, timeout=90)  # until squeue has every task terminal (no COMPLETING left)
    slurm_cluster.wait_job(job, timeout=60, source="sacct")
    states = slurm_cluster.sacct_states(job)
    assert set(states.values()) == {"CANCELLED"}, states  # the running task did not requeue itself
    status = run_cmd([*SWEEP, "status", path, "--root", root], env=slurm_cluster.env)
    line = counts_line(status.stdout)
    assert "pending 0  running 0" in line and "done 0" in line, status.stdout
