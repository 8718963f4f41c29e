"""A SLURM recipe (`slurm/*.sbatch`) as the launcher reads it: its `#SBATCH` resources and its `--help`.

`slurm/launch.sh` discovers the resources of a real job from SLURM's environment and builds the
srun/torchrun line; outside SLURM (a dry run, `--help`) the resources are the recipe's own `#SBATCH`
lines, read here once:

    python -m imgtrain.recipe resources slurm/ava_vit.sbatch     key=value lines for the launcher
    python -m imgtrain.recipe help slurm/ava_vit.sbatch [--config FILE] [--pack]
    python -m imgtrain.recipe dry-run RECIPE key=value ... --overrides ... -- STEP ...
                                     the report of `IMGTRAIN_DRY_RUN=1 bash slurm/<recipe>.sbatch ...`: what
                                     launch.sh found (key=value facts) and the srun line it built (STEP)

Standard library only: `bash slurm/<recipe>.sbatch --help` works before the venv exists. The knobs and the signal rules printed by `--help` are the sections of launch.sh's own header, so the
script and its help cannot drift apart.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "slurm" / "launch.sh"


def sbatch_lines(recipe: str | Path) -> list[str]:
    """The recipe's `#SBATCH` lines without the prefix, in order."""
    return [line[len("#SBATCH"):].strip() for line in Path(recipe).read_text().splitlines()
            if line.startswith("#SBATCH")]


def sbatch_options(recipe: str | Path) -> dict[str, str]:
    """`--NAME=VALUE` options of the recipe's `#SBATCH` lines (the last one wins, as in sbatch)."""
    opts: dict[str, str] = {}
    for line in sbatch_lines(recipe):
        for word in line.split():
            m = re.fullmatch(r"--([A-Za-z-]+)=(.*)", word)
            if m:
                opts[m.group(1)] = m.group(2)
    return opts


def count_gpus(value: Optional[str]) -> Optional[int]:
    """"4", "a100:4" or "gpu:a100:4" -> 4; a device list "0,1,2" -> 3; nothing -> None (the same rule as
    launch.sh's count_gpus, which reads SLURM's environment inside a job)."""
    if not value or value == "NoDevFiles":
        return None
    m = re.fullmatch(r"(?:[^:]*:)*(\d+)", value)
    return int(m.group(1)) if m else len(value.split(","))


def recipe_resources(recipe: str | Path) -> dict[str, str]:
    """What a dry run outside SLURM assumes: the recipe's nodes, CPUs per task, GPUs per node, logs."""
    opts = sbatch_options(recipe)
    gpus = count_gpus(opts.get("gpus-per-node"))
    if gpus is None:
        gpus = count_gpus(opts.get("gres"))
    return {"nodes": opts.get("nodes", ""), "cpus_per_task": opts.get("cpus-per-task", ""),
            "gpus": "" if gpus is None else str(gpus), "output": opts.get("output", ""),
            "error": opts.get("error", "")}


def launcher_section(first: str, until: str, launcher: Path = LAUNCHER) -> list[str]:
    """The header lines of launch.sh after the one starting `# FIRST`, before the one starting `UNTIL`,
    without the comment marks and blank lines."""
    lines = launcher.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"# {first}"))
    out = []
    for line in lines[start + 1:]:
        if line.startswith(until):
            break
        text = re.sub(r"^# ?", "", line)
        if text.strip(" #"):
            out.append(text)
    return out


def _display(recipe: Path, repo: Path) -> str:
    try:
        return str(recipe.relative_to(repo)) if recipe.is_absolute() else str(recipe)
    except ValueError:
        return str(recipe)


def _leading_comments(path: Path, *, skip_shebang: bool) -> list[str]:
    """A file's own description: its comment lines up to the first other line (or #SBATCH)."""
    out = []
    for line in path.read_text().splitlines():
        if skip_shebang and line.startswith("#!"):
            continue
        if not line.startswith("#") or line.startswith("#SBATCH"):
            break
        out.append("  " + re.sub(r"^# ?", "", line))
    return out


def help_text(recipe: str | Path, *, config: Optional[str] = None, pack: bool = False,
              repo: Path = REPO) -> str:
    """`bash slurm/<recipe>.sbatch --help`: what the recipe runs, with which resources and knobs."""
    recipe = Path(recipe)
    name = _display(recipe, repo)
    out = [name, *_leading_comments(recipe, skip_shebang=True), ""]
    if pack:
        out += ["runs: python -m shards pack KIND SRC OUT [pack options] (no config file; the options: "
                "python -m shards pack --help),",
                "  with --workers set to the allocated CPUs (SLURM_CPUS_PER_TASK) unless given"]
    else:
        if config:
            path = repo / config if (repo / config).is_file() else Path(config)
            out.append(f"config: {config}" + ("" if path.is_file() else " (not found)"))
            if path.is_file():
                out += [line for line in _leading_comments(path, skip_shebang=False)]
        else:
            out.append("config: CONFIG, the recipe's first argument, relative to the repository root; "
                       "jobs/configs/ holds:")
            names = " ".join(sorted(p.name for p in (repo / "jobs" / "configs").glob("*.yaml")))
            out += textwrap.wrap(names, width=98, initial_indent="  ", subsequent_indent="  ")
        out += [f"runs: srun, one task per node -> torchrun, one process per GPU -> jobs/train.py --config "
                f"{config or 'CONFIG'} [key=value ...]",
                "  key=value overrides any config key; the whole command, the run and its directory, without SLURM:",
                f"  IMGTRAIN_DRY_RUN=1 bash {name} [the arguments you would give sbatch]"]
    out += ["", f"resources: the #SBATCH lines of {name} (sbatch --OPTION=VALUE on the command line overrides any):"]
    out += [f"  {line}" for line in sbatch_lines(recipe)]
    res = recipe_resources(recipe)
    if pack:
        out.append(f"  -> one packer with {res['cpus_per_task'] or 1} worker(s)")
    else:
        out.append(f"  -> {res['nodes'] or 1} node(s) x {res['gpus'] or 1} process(es) (one per GPU; "
                   f"IMGTRAIN_NPROC on CPU partitions), {res['cpus_per_task'] or 1} CPUs per node")
    out += ["", "knobs (environment variables):", *launcher_section("Environment", "# Signals"),
            "", "signals and requeueing (USR1 = SLURM's warning before the time limit):",
            *launcher_section("Signals", "set -uo"),
            "", "every option of the launcher: bash slurm/launch.sh --help"]
    return "\n".join(out) + "\n"


def dry_run_text(recipe: Optional[str], facts: dict[str, str], overrides: list[str], step: list[str]) -> str:
    """What a training job would run: the run, where its resources come from, the container, the srun line."""
    f = facts
    res = recipe_resources(recipe) if recipe and Path(recipe).is_file() else {"output": "", "error": ""}
    nodes, nproc = int(f["nodes"]), int(f["nproc"])
    logs = (res["output"] or "slurm-JOB_ID.out") + (f" and {res['error']}" if res["error"] else "")
    if f.get("sif"):
        container = f"{f['sif']}: apptainer exec --nv --bind {f['binds']}" + \
            ("" if shutil.which("apptainer") else " (apptainer is not installed here)")
    else:
        container = "none (IMGTRAIN_SIF=path.sif runs every step in Apptainer)"
    lines = [
        "imgtrain launch, dry run: nothing is started",
        f"  repository   {f['repo']}",
        f"  config       {f['config']}" + (f" {shlex.join(overrides)}" if overrides else ""),
        f"  run          {f['run_id']} ({f['status']}, {f['attempts']} attempt(s) so far; "
        f"trainer.max_attempts={f['max_attempts']})",
        f"  run dir      {f['run_dir']}",
        *([f"  array task   {f['array_note']}"] if f.get("array_note") else []),
        f"  data         {f['data']}",
        f"  nodes        {nodes} ({f['source_nodes']})",
        f"  procs/node   {nproc} ({f['source_nproc']}); world size {nodes * nproc}; OMP_NUM_THREADS={f['omp']} "
        f"({f['cpus']} CPUs per task / {nproc})",
        f"  rendezvous   c10d at {f['head']}:{f['port']} (first node of `scontrol show hostnames`, port 20000 + "
        "job id % 20000)",
        f"  logs         {logs} (#SBATCH --output/--error, relative to the submit directory), linked into "
        f"{f['run_dir']}/logs/",
        f"  container    {container}",
        f"  signals      USR1/TERM -> the workers write last.pt and exit 75 -> scontrol requeue {f['job']} (an array "
        "task: only that task); failures: requeue until trainer.max_attempts, then FAILED",
        "the batch script runs:",
        f"  OMP_NUM_THREADS={f['omp']} {shlex.join(step)}"]
    return "\n".join(lines) + "\n"


def _dry_run_main(argv: list[str]) -> int:
    """dry-run RECIPE key=value ... --overrides OVERRIDE ... -- STEP ...: argparse cannot tell the three apart."""
    if "--" not in argv or "--overrides" not in argv or not argv:
        raise SystemExit("usage: python -m imgtrain.recipe dry-run RECIPE key=value ... --overrides ... -- STEP ...")
    recipe, rest = argv[0], argv[1:]
    cut, sep = rest.index("--overrides"), rest.index("--")
    facts = dict(a.split("=", 1) for a in rest[:cut])
    sys.stdout.write(dry_run_text(recipe or None, facts, rest[cut + 1:sep], rest[sep + 1:]))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dry-run"]:
        return _dry_run_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m imgtrain.recipe", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("resources", help="the recipe's #SBATCH resources as key=value lines (dry runs)")
    s.add_argument("recipe")
    s = sub.add_parser("help", help="what the recipe runs, with which resources and knobs")
    s.add_argument("recipe")
    s.add_argument("--config", default=None, help="the config the recipe trains (its --config)")
    s.add_argument("--pack", action="store_true", help="the recipe packs shards (slurm/pack_shards.sbatch)")
    args = p.parse_args(argv)
    if args.cmd == "resources":
        for key, value in recipe_resources(args.recipe).items():
            print(f"{key}={value}")
    else:
        sys.stdout.write(help_text(args.recipe, config=args.config, pack=args.pack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
