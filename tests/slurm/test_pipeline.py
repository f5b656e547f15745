"""The real stage-1 -> stage-2 chain on a local Slurm: submit_pipeline.sh submits the tiny recipe
twice (2 CPU ranks over gloo each), stage 2 with --dependency=afterok on stage 1 and the stage-1
weights. Asserts the order, the weights stage 2 loaded, and what both runs wrote."""

from __future__ import annotations

import pytest

from tests.slurm.jobs import (CPU_SHAPE, FAST, TINY, batch_log, job_env, job_info, metrics_steps, rank_log,
                              run_script, slurm_time, tail_logs, wait_done)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ITERS = 4


def test_stage1_then_stage2_from_its_weights(slurm, cleanup_jobs, tmp_path):
    root = tmp_path / "pipeline"
    stage1, stage2 = root / "stage1", root / "stage2"
    job1, job2 = run_script("submit_pipeline.sh", "--run-root", str(root), "--stage1-recipe", str(TINY),
                            "--stage2-recipe", str(TINY), *CPU_SHAPE, "--", *FAST, f"train.iters={ITERS}",
                            env=job_env())

    # Chained in Slurm itself, not by the script waiting.
    dependency = job_info(job2).get("Dependency", "")
    assert f"afterok:{job1}" in dependency, f"stage 2 (job {job2}) dependency is {dependency!r}"

    info1 = wait_done(job1, timeout=150, run_dir=stage1)
    info2 = wait_done(job2, timeout=150, run_dir=stage2)
    assert info1["JobState"] == "COMPLETED", f"stage 1: {info1}\n{tail_logs(stage1)}"
    assert info2["JobState"] == "COMPLETED", f"stage 2: {info2}\n{tail_logs(stage2)}"
    assert slurm_time(info2["StartTime"]) >= slurm_time(info1["EndTime"]), (info1, info2)

    # Stage 1 started from scratch; stage 2 loaded exactly stage 1's final weights, nothing else.
    log1 = rank_log(stage1, job1, attempt=0)
    assert "starting from random initialisation" in log1, log1[-2000:]
    log2 = rank_log(stage2, job2, attempt=0)
    expected = f"loaded model weights only from {stage1}/checkpoints/iter_{ITERS:07d}"
    assert expected in log2, log2[-2000:]
    assert "resumed from" not in log2

    for run_dir, job, name in ((stage1, job1, "emu3-stage1"), (stage2, job2, "emu3-stage2")):
        assert metrics_steps(run_dir)[-1] == ITERS, tail_logs(run_dir)
        assert (run_dir / "COMPLETE").read_text().strip() == str(ITERS)
        assert (run_dir / "config.yaml").is_file()
        assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"iter_{ITERS:07d}"
        # Per-rank logs, and the commit and command recorded for every attempt.
        assert rank_log(run_dir, job, attempt=0, rank=1)
        record = (run_dir / "launch" / f"job-{job}.txt").read_text()
        assert "commit" in record and "megatron_emu3.train" in record, record
        assert "training finished" in batch_log(run_dir, name, job)
    # Stage 2 ran the same 2-rank layout: a second data-parallel rank wrote its own log.
    assert "world 2" in log2
