"""`python jobs/sweep.py`: submit a sweep file's cells, show their status, cancel them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from imgtrain import config as C

EPILOG = """\
examples:
  python jobs/sweep.py jobs/grids/cifar10_mlp.yaml data.path=/data/cifar10 --dry-run
  python jobs/sweep.py jobs/grids/cifar10_mlp.yaml data.path=/data/cifar10 --partition gpu --array-parallelism 8
  python jobs/sweep.py jobs/grids/cifar10_mlp.yaml data.path=/data/cifar10 --executor local --parallel 2
  python jobs/sweep.py jobs/grids/cifar10_mlp.yaml data.path=/data/cifar10 --retry-failed
  python jobs/sweep.py status jobs/grids/cifar10_mlp.yaml data.path=/data/cifar10
  python jobs/sweep.py status cifar10_mlp --root runs-root     (by name, from <root>/sweeps/<name>)
  python jobs/sweep.py cancel cifar10_mlp
  python jobs/sweep.py jobs/grids/digits_mlp_asha.yaml --executor local --parallel 2   (ASHA: returns at once)

Submitting again is safe: done, pruned, queued and running cells are skipped; stopped cells resume
from last.pt; failed cells run again only with --retry-failed; new grid values add only new cells.
schedule: asha submits its workers (a SLURM array, or detached local processes) and returns; they finish
the sweep with nobody watching; `status` shows each rung's results, promotions and pruning.
Runs land in <root>/runs/<sweep name>-<cell id>; <root> is --root, else output.root, else $IMGTRAIN_ROOT,
else the current directory. Sweep records: <root>/sweeps/<name>/.
exit status: 0 ok, 1 a cell run by this command failed (local/debug) or halving cannot go on now,
2 bad sweep file / config / preflight; status: 1 when some cell is failed
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobs/sweep.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        usage="jobs/sweep.py GRID.yaml [options] [key=value ...]\n"
              "       jobs/sweep.py status SWEEP_OR_GRID [--root R] [key=value ...]\n"
              "       jobs/sweep.py cancel SWEEP_OR_GRID [--root R] [key=value ...]",
        description="Run a grid of training runs (a sweep file, DESIGN §7) as one SLURM job array (submitit), "
                    "as local processes, or in this process.")
    p.add_argument("grid", metavar="GRID.yaml", help="sweep file (jobs/grids/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every cell")
    p.add_argument("--executor", choices=("slurm", "local", "debug"), default="slurm",
                   help="slurm: one submitit job array (default); local: subprocesses, --parallel at a time; "
                        "debug: in this process, one after the other")
    p.add_argument("--dry-run", action="store_true", help="print the cell table (id, run id, status, config hash, "
                                                          "overrides), run the preflight a submission would "
                                                          "run (exit 2 if it fails) and submit nothing")
    p.add_argument("--retry-failed", action="store_true", help="also run cells whose run is FAILED (resumes "
                                                               "from last.pt when there is one)")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="local executor: cells at once (1)")
    p.add_argument("--root", help="output root (runs in ROOT/runs, records in ROOT/sweeps/NAME)")
    p.add_argument("--wait", action="store_true", help="slurm: wait until the submitted cells are finished")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the data set / model / weights check before submitting")
    p.add_argument("--limit", type=int, metavar="N", help="--dry-run/status: show the first N cells only")
    g = p.add_argument_group("SLURM resources (override the sweep file's resources:)")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--time", help="minutes or D-HH:MM:SS")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--tasks-per-node", type=int, help="processes per node (default: gpus per node, or 1)")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--mem-gb", type=float)
    g.add_argument("--array-parallelism", type=int, metavar="N", help="array tasks running at once")
    return p


def _status_parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"jobs/sweep.py {cmd}", description={
        "status": "Counts and each cell's state and best monitored metric, read from the run directories "
                  "(SLURM state as extra information).",
        "cancel": "Cancel the sweep's queued and running SLURM array tasks (scancel) and local runs (SIGTERM: "
                  "they write last.pt)."}[cmd])
    p.add_argument("sweep", metavar="SWEEP_OR_GRID", help="a sweep file, or a sweep name under ROOT/sweeps")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="the overrides the sweep was submitted with")
    p.add_argument("--root", help="output root (default: output.root, $IMGTRAIN_ROOT, or .)")
    if cmd == "status":
        p.add_argument("--limit", type=int, metavar="N", help="show the first N cells only")
    return p


def _load(target: str, overrides: Sequence[str], root: Optional[str]):
    """A sweep file, or a sweep name recorded under <root>/sweeps/<name>/sweep.json (by its file and the
    command-line overrides it was submitted with; by the recorded cells when the file is gone)."""
    from imgtrain.sweep.spec import SpecError, load_spec
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_spec(path, overrides, root)
    from imgtrain.logs.runinfo import resolve_root
    from imgtrain.sweep.records import SweepDir
    base = Path(root) if root else resolve_root(None)
    info = SweepDir(base, target).info()
    if info is None:
        raise SpecError(f"no sweep file '{target}' and no sweep named '{target}' under {base.resolve()}/sweeps "
                        "(give the sweep file, or --root)")
    if info.get("file") and Path(info["file"]).is_file():
        return load_spec(info["file"], list(overrides) or info.get("cli_overrides", []), info.get("root"))
    from imgtrain.sweep.spec import from_record
    return from_record(info)


def _dry_run_preflight(states, args) -> int:
    """The preflight a submission would run, on the cells it would submit (the last line of a dry run)."""
    from imgtrain.sweep.executors import preflight, select
    chosen = [st.cell for st in select(states, args.retry_failed)[0]]
    if args.no_preflight:
        print("preflight: skipped (--no-preflight)")
        return 0
    if not chosen:
        print("preflight: nothing would be submitted, nothing to check")
        return 0
    problems = preflight(chosen)
    what = f"{len(chosen)} cell(s) a submission would run (data set, model name, weights file, DeepSpeed config)"
    if problems:
        print(f"preflight: FAILED for the {what}: a submission would stop here (the problems: stderr)")
        print("sweep error: preflight failed, nothing would be submitted:\n  " + "\n  ".join(problems[:20]) +
              (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else ""), file=sys.stderr)
        return 2
    print(f"preflight: ok for the {what}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `... --dry-run | head`
        sys.stderr.close()
        return 0


def _main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from imgtrain.sweep.spec import SpecError
    if argv and argv[0] in ("status", "cancel"):
        cmd = argv.pop(0)
        args = _status_parser(cmd).parse_args(argv)
        try:
            sweep = _load(args.sweep, args.overrides, args.root)
        except C.ConfigError as e:
            print(f"sweep error: {e}", file=sys.stderr)
            return 2
        if cmd == "status":
            from imgtrain.sweep.status import print_status
            states = print_status(sweep)
            return 1 if any(st.state == "failed" for st in states) else 0
        from imgtrain.sweep.status import cancel
        cancel(sweep)
        return 0

    args = _parser().parse_args(argv)
    try:
        sweep = _load(args.grid, args.overrides, args.root) if not args.grid.endswith((".yaml", ".yml")) or \
            Path(args.grid).is_file() else None
        if sweep is None:
            raise SpecError(f"cannot read sweep file {args.grid}: no such file")
    except C.ConfigError as e:
        print(f"sweep error: {e}", file=sys.stderr)
        return 2
    for w in sweep.warnings:
        print(f"[sweep] warning: {w}", file=sys.stderr)

    from imgtrain.sweep import status as S
    if args.dry_run:
        states = S.cell_states(sweep)
        print(S.header(sweep))
        if sweep.halving:
            from imgtrain.sweep.halving import HOOK, engine_supports_halving
            if not engine_supports_halving():
                print(f"warning: halving needs the engine hook {HOOK}; this imgtrain does not have it")
        S.print_cells(sweep, states, dry_run=True, show_metric=False, limit=args.limit)
        print(S.format_counts(S.counts(states)))
        return _dry_run_preflight(states, args)

    from imgtrain.sweep.executors import Options, PreflightError, launch, say
    resources = {"partition": args.partition, "account": args.account, "qos": args.qos,
                 "time": (int(args.time) if args.time and args.time.isdigit() else args.time),
                 "nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "tasks_per_node": args.tasks_per_node,
                 "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem_gb,
                 "array_parallelism": args.array_parallelism}
    opts = Options(executor=args.executor, parallel=args.parallel, retry_failed=args.retry_failed,
                   resources={k: v for k, v in resources.items() if v is not None}, wait=args.wait,
                   preflight=not args.no_preflight)
    say(S.header(sweep))
    try:
        if sweep.halving and sweep.halving.asha:
            from imgtrain.sweep import asha
            return asha.submit(sweep, opts)  # the workers finish the sweep: nothing waits here
        elif sweep.halving:
            from imgtrain.sweep import halving
            rc = halving.run(sweep, opts)
        else:
            sub = launch(sweep, opts)
            rc = 1 if any(o.startswith("FAILED") for o in sub.outcomes.values()) else 0
    except PreflightError as e:
        print(f"sweep error: {e}", file=sys.stderr)
        return 2
    except C.ConfigError as e:
        print(f"sweep error: {e}", file=sys.stderr)
        return 2
    if args.executor != "slurm" or args.wait or sweep.halving:
        say("now: " + S.format_counts(S.counts(S.cell_states(sweep))))
    else:
        say(f"follow with: python jobs/sweep.py status {sweep.name} --root {sweep.root}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
