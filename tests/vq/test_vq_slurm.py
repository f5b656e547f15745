"""vq_train.sbatch on the local Slurm: 2 CPU ranks through srun; USR1 to the batch script (what
--signal=B:USR1@N delivers before the time limit) makes the ranks save and stop, the job requeues
itself, and the requeued attempt resumes from that checkpoint and finishes with a tokenizer."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.media_samples import save_photo
from tests.slurm.conftest import cleanup_jobs, slurm  # noqa: F401  (fixtures)
from tests.slurm.jobs import (REPO, SLURM_DIR, job_env, job_info, metrics_steps, rank_log, tail_logs, track,
                              wait_done, wait_for)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEPS = 20  # the signal goes out after step 2 and lands a step or two later (asserted: 0 < step < STEPS)


def test_vq_job_saves_on_signal_requeues_and_finishes(slurm, cleanup_jobs, tmp_path):  # noqa: F811
    from megatron_emu3.vq.lpips import save_random_weights

    data = tmp_path / "data"
    rows = [{"text": n, "image": save_photo(data / f"{n}.jpg", n, mode="RGB", size=(120, 90)).name}
            for n in ("astronaut", "coffee", "rocket", "chelsea")]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lpips = save_random_weights(tmp_path / "random_lpips_vgg16")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = subprocess.run(
        ["sbatch", "--parsable", "--nodes", "1", "--ntasks-per-node", "2", "--cpus-per-task", "1",
         "--output", str(run_dir / "batch.out"), str(SLURM_DIR / "vq_train.sbatch"),
         str(REPO / "examples/recipes/tiny_vq.yaml"), f"run_dir={run_dir}", f"loss.lpips_weights={lpips}",
         f"train.steps={STEPS}", "data.micro_batch_size=1", "train.log_interval=1", "data.holdout=1",
         "train.eval_interval=0"],
        cwd=REPO, env=job_env(EMU3_VQ_DATA=str(data), PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=60)
    assert job.returncode == 0, job.stderr
    job = job.stdout.strip().split(";")[0]
    track(job)
    wait_for(lambda: max(metrics_steps(run_dir), default=0) >= 2 and job_info(job)["JobState"] == "RUNNING", 180,
             "the first training steps", poll=0.2, describe=lambda: tail_logs(run_dir))
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
    info = wait_done(job, timeout=300, run_dir=run_dir)
    batch = (run_dir / "batch.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", f"{info}\n{batch}\n{tail_logs(run_dir)}"
    first = rank_log(run_dir, job, attempt=0)
    stopped = re.search(r"stopped by signal at step (\d+)", first)
    assert stopped, first[-3000:]
    step = int(stopped.group(1))
    assert 0 < step < STEPS
    assert f"at step {step}" in rank_log(run_dir, job, attempt=1)
    assert "requeueing job" in batch and "training finished" in batch
    assert (run_dir / "COMPLETE").read_text().strip() == str(STEPS) and (run_dir / "vq" / "config.json").is_file()
