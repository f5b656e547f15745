"""Fixtures of the Slurm tests: a running local Slurm (installed and started by the project's own
launch/local_slurm/start.sh when missing), and cleanup of submitted jobs.

Without root (and no Slurm already running) or without a way to install it, the tests skip with the
reason. Where they must run (CI, which runs as root: CI=true; or EMU3_REQUIRE_SLURM=1), a missing
Slurm or lint tool fails instead of skipping. EMU3_REQUIRE_SLURM=0 always allows skipping.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.slurm.jobs import REPO, cancel_all, skip_or_fail

START = REPO / "launch" / "local_slurm" / "start.sh"


@pytest.fixture(scope="session")
def slurm():
    """A one-node local Slurm that accepts jobs."""
    try:
        # The daemons outlive every test: without the test's name in their environment, the orphan
        # reaper of tests/conftest.py does not take them for leftovers of the test that started them.
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=300, env=env)
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
