"""Exact resume: SIGKILL a run (no save), relaunch, and the loss curve after the last checkpoint is
bitwise identical to an uninterrupted run. Dropout is on, so RNG states must be restored too. Also:
a kill during a save leaves the previous checkpoint loadable, and resuming a finished run is a no-op."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_emu3.checkpoint import layout
from tests.distributed.runs import records, wait_for_step

REPO = Path(__file__).resolve().parents[2]
ITERS = 30  # checkpoints at 10, 20, 30; the kill after step 12 leaves 18 steps (~2 s) to spare
ARGS = ["--config", str(REPO / "examples/recipes/tiny.yaml"), f"train.iters={ITERS}", "checkpoint.interval=10",
        "model.hidden_dropout=0.1", "model.attention_dropout=0.1", "data.seq_length=128", "model.vocab_size=512",
        "optimizer.warmup_iters=2"]


def _train(run_dir: Path, *extra: str, wait: bool = True, timeout: float = 300):
    cmd = [sys.executable, "-m", "megatron_emu3.train", *ARGS, f"run_dir={run_dir}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_port())}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _port() -> int:
    from tests.distributed.launcher import free_port

    return free_port()


def _losses(run_dir: Path) -> dict[int, float]:
    """Last logged loss of each step (a resumed run appends the steps it redoes)."""
    return {step: record["loss"] for step, record in records(run_dir).items()}


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("full") / "run"
    _train(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return _losses(uninterrupted_run)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = _train(run_dir, wait=False)
    wait_for_step(run_dir, 12, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run_dir / "COMPLETE").exists(), "the run finished before the kill; raise ITERS"
    saved = layout.step_of(layout.find_latest(run_dir / "checkpoints"))
    assert saved >= 10 and saved % 10 == 0
    out = _train(run_dir)
    assert "resumed from" in out and f"at step {saved}" in out
    resumed = _losses(run_dir)
    assert sorted(resumed) == list(range(1, ITERS + 1))
    for step in range(1, ITERS + 1):
        assert resumed[step] == uninterrupted[step], f"step {step}: {resumed[step]!r} != {uninterrupted[step]!r}"
    assert (run_dir / "COMPLETE").read_text().strip() == str(ITERS)


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    _train(run_dir, "train.iters=3")
    # what a kill in the middle of saving step 6 leaves behind: a partial dir, latest still at 3
    partial = layout.partial_dir(run_dir / "checkpoints", 6)
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half written")
    out = _train(run_dir)
    assert "resumed from" in out and "at step 3" in out
    assert _losses(run_dir)[ITERS] == uninterrupted[ITERS]
    assert not partial.exists()


def test_relaunching_a_finished_run_trains_nothing(uninterrupted_run, uninterrupted):
    lines_before = (uninterrupted_run / "metrics.jsonl").read_text()
    checkpoints_before = sorted(p.name for p in (uninterrupted_run / "checkpoints").iterdir())
    out = _train(uninterrupted_run)
    assert f"at step {ITERS}" in out
    assert (uninterrupted_run / "metrics.jsonl").read_text() == lines_before
    assert sorted(p.name for p in (uninterrupted_run / "checkpoints").iterdir()) == checkpoints_before
    assert _losses(uninterrupted_run) == uninterrupted  # what the other tests compare against is unchanged


def test_async_saves_resume_like_sync_saves(tmp_path, uninterrupted):
    """Checkpoints written in the background are published only once complete and resume exactly."""
    run_dir = tmp_path / "run"
    out = _train(run_dir, "train.iters=20", f"optimizer.decay_iters={ITERS}", "checkpoint.async_save=true")
    assert "asynchronously" in out
    assert [p.name for p in layout.complete_checkpoints(run_dir / "checkpoints")] == ["iter_0000010", "iter_0000020"]
    assert not list((run_dir / "checkpoints").glob("*.partial"))
    out = _train(run_dir, "checkpoint.async_save=true")
    assert "at step 20" in out
    resumed = _losses(run_dir)
    for step in range(1, ITERS + 1):
        assert resumed[step] == uninterrupted[step], step
