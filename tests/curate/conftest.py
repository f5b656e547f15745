"""The local-Slurm fixtures of tests/slurm, for the curation job-array test."""

from tests.slurm.conftest import cleanup_jobs, slurm  # noqa: F401 (pytest fixtures)
