"""Sweeps: a sweep file (spec.py) expanded into cells, each one run with a stable id, submitted as a
SLURM job array, local processes or in-process (executors.py), preemption-safe under submitit (job.py),
with optional successive halving (halving.py), status and cancel (status.py). CLI: jobs/sweep.py."""
from imgtrain.sweep.spec import Cell, Halving, SpecError, Sweep, build, cell_hash, load_spec

__all__ = ["Cell", "Halving", "SpecError", "Sweep", "build", "cell_hash", "load_spec"]
