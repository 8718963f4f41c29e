"""Run a function over a list of tasks: in this process, in a process pool, or as a submitit job
array. Results always come back in task order, so the output never depends on scheduling."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, TypeVar

from shards.procs import die_with_parent

T = TypeVar("T")
R = TypeVar("R")


def run_tasks(fn: Callable[[T], R], tasks: list[T], workers: int,
              on_done: Callable[[R], None] | None = None) -> list[R]:
    """fn(task) for every task with up to ``workers`` processes; on_done sees each result as it lands."""
    on_done = on_done or (lambda r: None)
    if workers <= 1 or len(tasks) <= 1:
        results = []
        for t in tasks:
            results.append(fn(t))
            on_done(results[-1])
        return results
    results: list = [None] * len(tasks)
    # fork: workers start fast and need no re-import; the parent runs no threads at this point.
    ctx = multiprocessing.get_context("fork")
    # a worker outlives a parent killed with -9 (it finishes its tasks, then waits forever): it dies with it;
    # what it had half written is a temporary file, never a shard (writer.py renames complete shards only)
    init = functools.partial(die_with_parent, signal.SIGKILL, os.getpid())
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=init) as pool:
        futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    results[futures[fut]] = fut.result()  # re-raises a worker's exception
                    on_done(results[futures[fut]])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


def _run_group(fn, tasks, workers):
    return run_tasks(fn, tasks, workers)


def run_array(fn: Callable[[T], R], tasks: list[T], array: int, workers: int, cluster: str,
              folder: str, slurm_partition: str | None = None, timeout_min: int = 240) -> list[R]:
    """The same as run_tasks, as a submitit job array of ``array`` jobs, each taking a contiguous
    range of tasks (and using ``workers`` processes itself). Blocks until every job is done."""
    import submitit  # optional path: imported only when asked for

    groups = _ranges(tasks, array)
    # Jobs unpickle shards.* functions, so they must find this package wherever they start.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {"timeout_min": timeout_min, "cpus_per_task": max(1, workers)}
    if cluster == "slurm" and slurm_partition:
        params["slurm_partition"] = slurm_partition
    executor.update_parameters(**params)
    jobs = executor.map_array(_run_group, [fn] * len(groups), groups, [workers] * len(groups))
    return [r for job in jobs for r in job.result()]


def _ranges(items: list, n: int) -> list[list]:
    n = max(1, min(n, len(items)))
    bounds = [round(i * len(items) / n) for i in range(n + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]
