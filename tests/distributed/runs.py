"""Helpers for tests that run the training entry points as processes: read metrics, wait for a step
or a checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path


def records(run_dir: Path) -> dict[int, dict]:
    """The last logged record of each step (a resumed run appends the steps it redoes)."""
    return {r["step"]: r for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())}


def wait_for_step(run_dir: Path, step: int, proc, timeout: float = 300) -> None:
    """Block until `run_dir`'s metrics reach `step`; fail with the process's output if it exits first."""
    deadline = time.time() + timeout
    metrics = Path(run_dir) / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(l)["step"] >= step for l in metrics.read_text().splitlines() if l):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout}s")


def wait_for_checkpoint(run_dir: Path, proc, timeout: float = 120) -> Path:
    """Block until a checkpoint of `run_dir` is published (a moment after its step is logged)."""
    from megatron_emu3.checkpoint import layout

    deadline = time.time() + timeout
    while (found := layout.find_latest(Path(run_dir) / "checkpoints")) is None:
        if proc.poll() is not None:
            raise AssertionError(f"run exited before a checkpoint was published:\n{proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, f"no checkpoint published in {timeout}s"
        time.sleep(0.05)
    return found
