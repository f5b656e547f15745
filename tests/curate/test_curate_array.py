"""curate_array.sbatch as a real 2-task job array on the local Slurm (CPU, one worker per task): the
tasks split the shards, and the task that completes the run merges the outputs."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.media_samples import pan_video, save_photo
from tests.slurm.jobs import REPO, SLURM_DIR, TERMINAL, job_env, track, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def array_states(job: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    return [field.split("=", 1)[1] for line in out.stdout.splitlines() for field in line.split()
            if field.startswith("JobState=")]


def test_array_tasks_curate_and_merge(slurm, cleanup_jobs, tmp_path):
    media = tmp_path / "media"
    rows = [{"text": "an astronaut", "image": str(save_photo(media / "astronaut.jpg", "astronaut"))},
            {"text": "a cameraman", "image": str(save_photo(media / "camera.png", "camera"))},
            {"text": "three shots", "video": str(pan_video(media / "cuts.mp4", "coffee", frames=24,
                                                           cuts=("rocket", "retina")))}]
    manifest = tmp_path / "raw.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefix = tmp_path / "curated" / "web"
    env = job_env(INPUT=str(manifest), OUTPUT_PREFIX=str(prefix), EMU3_REPO=str(REPO), SHARD_SIZE="1")
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    proc = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1",
                           f"--output={log_dir}/curate-%A_%a.out", str(SLURM_DIR / "curate_array.sbatch")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    track(job)

    def logs():
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(log_dir.glob("*.out")))

    states = wait_for(lambda: (s := array_states(job)) and len(s) == 2 and set(s) <= TERMINAL and s, 240,
                      f"array job {job}", poll=1.0, describe=logs)
    assert states == ["COMPLETED", "COMPLETED"], logs()
    kept = [json.loads(line) for line in (tmp_path / "curated" / "web_kept.jsonl").read_text().splitlines()]
    dropped = [json.loads(line) for line in (tmp_path / "curated" / "web_dropped.jsonl").read_text().splitlines()]
    assert [r["text"] for r in kept] == ["an astronaut"] + ["three shots"] * 3, logs()
    assert [d["rule"] for d in dropped] == ["colour.monochrome"]
    assert "merged outputs" in logs()
