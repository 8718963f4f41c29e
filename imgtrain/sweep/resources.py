"""The SLURM resources of a sweep and of its cells: the names a sweep file may give, their types and
defaults, and the checks of the values."""
from __future__ import annotations

from typing import Any

from imgtrain.sweep.cells import SpecError, _suggest

# SLURM resources of a cell (submitit names where they exist)
RESOURCE_KEYS = {
    "partition": str, "account": str, "qos": str, "constraint": str,
    "nodes": int, "gpus_per_node": int, "tasks_per_node": int, "cpus_per_task": int,
    "mem_gb": (int, float), "time": (int, str),  # minutes, or a SLURM time string ("1-00:00:00")
    "signal_delay_s": int,  # SIGUSR1 this long before the time limit (the trainer saves and stops)
    "array_parallelism": int,  # tasks of the array running at once
    "max_requeues": int,  # a task stops requeueing itself after this many restarts
    "additional": dict,  # raw sbatch options {"exclusive": true, "gres": "gpu:a100:4"}
    "setup": list,  # shell lines run before the task (module load ..., source venv)
}
RESOURCE_DEFAULTS = {"nodes": 1, "time": 60, "signal_delay_s": 120, "max_requeues": 20}


def _check_resources(res: Any, where: str) -> dict[str, Any]:
    if res is None:
        return {}
    if not isinstance(res, dict):
        raise SpecError(f"{where}: expected a mapping of resource names, got {res!r}")
    for k, v in res.items():
        if k not in RESOURCE_KEYS:
            raise SpecError(f"unknown resource '{k}' [{where}]{_suggest(str(k), list(RESOURCE_KEYS))}")
        _check_resource_value(k, v, f"{where}.{k}")
    return dict(res)


def _check_resource_value(k: str, v: Any, where: str) -> None:
    tp = RESOURCE_KEYS[k]
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, tp):
        names = " or ".join(t.__name__ for t in (tp if isinstance(tp, tuple) else (tp,)))
        raise SpecError(f"{where}: expected {names}, got {v!r} ({type(v).__name__})")
    if tp is int and v < (0 if k in ("signal_delay_s", "max_requeues") else 1):
        raise SpecError(f"{where}: must be positive, got {v}")
