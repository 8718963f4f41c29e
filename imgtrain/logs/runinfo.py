"""Run directory bookkeeping (DESIGN §2): where runs live and run.json with one entry per attempt.
The run itself (id, directory, status markers, the attempt lifecycle) is imgtrain.runs, built on this.
Only rank 0 calls the writing functions."""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from imgtrain.logs.atomic import atomic_write_text, is_temp_name

RUN_JSON = "run.json"

VERSION_PACKAGES = ("imgtrain", "torch", "torchvision", "timm", "numpy", "pyarrow", "webdataset", "deepspeed")
# attempt fields read from the environment when SLURM (or submitit on SLURM) started us
SLURM_ENV = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "node_list": "SLURM_JOB_NODELIST",
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- locations

def resolve_root(cfg_root: str | os.PathLike | None = None) -> Path:
    """The output root: `output.root`, else $IMGTRAIN_ROOT, else "."; runs live in <root>/runs/<run_id>."""
    root = cfg_root or os.environ.get("IMGTRAIN_ROOT") or "."
    return Path(root).expanduser()


def is_run_dir(path: Path) -> bool:
    return (path / RUN_JSON).is_file() or (path / "metrics").is_dir() or (path / "summary.parquet").is_file()


def iter_run_dirs(root: str | os.PathLike, run_ids: Optional[Iterable[str]] = None) -> list[Path]:
    """Run directories under `root`, which is one run dir, a `runs/` dir, or a root holding `runs/`.

    `run_ids` narrows a listing to runs/<id> (a single run dir given as root is returned as is).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such run root: {root}")
    if is_run_dir(root):
        return [root]
    base = root / "runs" if (root / "runs").is_dir() else root
    if run_ids is not None:
        return [base / r for r in dict.fromkeys(run_ids) if (base / r).is_dir()]
    with os.scandir(base) as it:
        return sorted(Path(e.path) for e in it if e.is_dir() and not is_temp_name(e.name))


# --------------------------------------------------------------------------- run.json

@functools.lru_cache(maxsize=1)
def git_sha() -> Optional[str]:
    """HEAD of the git tree holding the imgtrain sources; None when that cannot be known."""
    src = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5, check=False
        )
    except Exception:
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) >= 40 else None


def package_versions() -> dict[str, str]:
    """Python and installed package versions, read from metadata (nothing heavy is imported)."""
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def slurm_info(env: Optional[dict[str, str]] = None) -> Optional[dict[str, Any]]:
    """SLURM ids of this job from the environment, or None outside SLURM."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env:
        return None
    info: dict[str, Any] = {k: env.get(v) for k, v in SLURM_ENV.items()}
    info["node_list"] = info["node_list"] or env.get("SLURM_NODELIST")
    if info["restart_count"] is not None:
        try:
            info["restart_count"] = int(info["restart_count"])
        except ValueError:
            pass
    return info


def read_run(run_dir: str | os.PathLike) -> Optional[dict[str, Any]]:
    """run.json as a dict, or None before the first attempt."""
    path = Path(run_dir) / RUN_JSON
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def _write_run(run_dir: Path, info: dict[str, Any]) -> None:
    atomic_write_text(run_dir / RUN_JSON, json.dumps(info, indent=2) + "\n")


def start_attempt(
    run_dir: str | os.PathLike,
    *,
    run_id: str,
    sweep: Optional[str] = None,
    cell: Optional[str] = None,
    config_hash: Optional[str] = None,
    world_size: int = 1,
    hosts: Optional[list[str]] = None,
) -> int:
    """Record the start of an attempt in run.json (created on the first) and return its number:
    0 for the first start, +1 for each resume. Attempts that never recorded an end are marked "lost".

    Top-level fields hold the latest values; each attempt also keeps its own world size, hosts,
    config hash and git sha, since a requeued job may land on a different allocation or code.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = read_run(run_dir) or {"run_id": run_id, "created": now_iso(), "attempts": []}
    attempts = info.setdefault("attempts", [])
    for a in attempts:
        if a.get("end") is None and a.get("status") == "running":
            a["status"] = "lost"
    number = max((a["attempt"] for a in attempts), default=-1) + 1
    hosts = list(hosts) if hosts is not None else [socket.gethostname()]
    sha = git_sha()
    info.update(
        run_id=run_id,
        sweep=sweep,
        cell=cell,
        config_hash=config_hash,
        git_sha=sha,
        versions=package_versions(),
        hosts=hosts,
        world_size=world_size,
    )
    attempts.append(
        {
            "attempt": number,
            "start": now_iso(),
            "end": None,
            "exit": None,
            "status": "running",
            "reason": None,
            "slurm": slurm_info(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "hosts": hosts,
            "world_size": world_size,
            "config_hash": config_hash,
            "git_sha": sha,
        }
    )
    info["attempts"] = attempts  # keep attempts last in the file: it is the part that grows
    _write_run(run_dir, info)
    return number


def add_warning(run_dir: str | os.PathLike, text: str) -> str:
    """Record a warning about the run's validity (e.g. data.select_on_test) in run.json: in the top-level
    "warnings" list (once per text) and in the latest attempt's. Returns `text`, for the log line. Without
    run.json (a Trainer used outside engine.run, e.g. by a benchmark) nothing is written."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    if info is None:
        return text
    attempts = info.pop("attempts", [])
    if text not in info.setdefault("warnings", []):
        info["warnings"].append(text)
    if attempts and text not in attempts[-1].setdefault("warnings", []):
        attempts[-1]["warnings"].append(text)
    info["attempts"] = attempts  # attempts stay last in the file
    _write_run(run_dir, info)
    return text


def end_attempt(
    run_dir: str | os.PathLike, attempt: int, *, status: str, exit_code: Optional[int], reason: Optional[str] = None
) -> None:
    """Fill in end time, exit code, status ("done", "failed", "preempted", ...) and reason."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    entry = next((a for a in (info or {}).get("attempts", []) if a.get("attempt") == attempt), None)
    if entry is None:
        raise ValueError(f"{run_dir / RUN_JSON}: no attempt {attempt} to end")
    entry.update(end=now_iso(), exit=exit_code, status=status, reason=reason)
    _write_run(run_dir, info)
