"""Preemption and time limits on a real Slurm: USR1 to the batch script (what --signal=B:USR1@N
delivers before the time limit) makes the ranks save and stop; the job requeues itself and the
requeued run resumes from that checkpoint and finishes. A job that keeps failing stops requeueing."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.slurm.jobs import (CPU_SHAPE, FAST, TINY, batch_log, job_env, job_info, metrics_steps, rank_log,
                              run_script, tail_logs, wait_done, wait_for)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_signal_saves_requeues_and_resumes(slurm, cleanup_jobs, tmp_path):
    """Under pipeline parallelism (2 stages), which the launch scripts take like any other dimension."""
    run_dir = tmp_path / "preempt"
    # The signal goes out after step 3; 77 steps more (8-30 s on 2 cores) leave it time to land mid-run, which the
    # test asserts. The resumed attempt runs the rest.
    iters = 80
    (job,) = run_script("submit.sh", str(TINY), "--run-dir", str(run_dir), "--name", "emu3-preempt", *CPU_SHAPE,
                        "--", *FAST, f"train.iters={iters}", "parallel.pp=2", env=job_env())

    wait_for(lambda: len(metrics_steps(run_dir)) >= 3 and job_info(job)["JobState"] == "RUNNING", 120,
             "the first training steps", poll=0.2, describe=lambda: tail_logs(run_dir))
    # What Slurm does at --signal=B:USR1@N: signal the batch shell only; it forwards to the ranks.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)

    info = wait_done(job, timeout=240, run_dir=run_dir)
    assert info["JobState"] == "COMPLETED", f"{info}\n{tail_logs(run_dir)}"
    assert info["Restarts"] == "1", f"expected one requeue: {info}"

    first = rank_log(run_dir, job, attempt=0)
    saved = re.search(r"saved checkpoint on signal at step (\d+)", first)
    assert saved, f"attempt 0 did not save on the signal:\n{first[-3000:]}"
    step = int(saved.group(1))
    assert 0 < step < iters
    second = rank_log(run_dir, job, attempt=1)
    assert f"resumed from {run_dir}/checkpoints/iter_{step:07d} at step {step}" in second, second[-3000:]
    assert f"training complete at step {iters}" in second

    out = batch_log(run_dir, "emu3-preempt", job)
    assert f"requeueing job {job}" in out and "training finished" in out, out
    assert (run_dir / "COMPLETE").read_text().strip() == str(iters)
    steps = metrics_steps(run_dir)
    assert steps[-1] == iters and set(range(1, iters + 1)) <= set(steps), (steps[:5], steps[-5:])


def test_repeated_failure_stops_requeueing(slurm, cleanup_jobs, tmp_path):
    run_dir = tmp_path / "broken"
    run_dir.mkdir()
    # A real, repeatable failure: the checkpoint directory is a file, so the first save fails.
    (run_dir / "checkpoints").write_text("not a directory\n")
    (job,) = run_script("submit.sh", str(TINY), "--run-dir", str(run_dir), "--name", "emu3-broken", *CPU_SHAPE,
                        "--", *FAST, "train.iters=3", "checkpoint.interval=1",
                        env=job_env(EMU3_MAX_STALLED="2"))

    info = wait_done(job, timeout=180, run_dir=run_dir)
    assert info["JobState"] == "FAILED", f"{info}\n{tail_logs(run_dir)}"
    assert info["Restarts"] == "1", f"expected exactly one requeue before giving up: {info}"
    out = batch_log(run_dir, "emu3-broken", job)
    assert "NOT REQUEUEING: 2 attempts in a row ended without a newer checkpoint" in out, out
    assert not (run_dir / "COMPLETE").exists()
