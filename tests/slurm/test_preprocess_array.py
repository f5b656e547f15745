"""preprocess_array.sbatch as a real 2-task job array on the local Slurm (CPU, one worker per task):
each task runs tools/preprocess_data.py on its slice of the manifests, and together they write
every document once, with one JSON report per task."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.slurm.jobs import REPO, SLURM_DIR, TERMINAL, job_env, track, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TOOL = REPO / "tools" / "preprocess_data.py"


def tiny_vq(path):
    """A random, tiny Emu3 vision tokenizer saved as a local directory (never a hub download)."""
    from megatron_emu3.data.vision_tokenizer import save_tiny_vq

    return save_tiny_vq(path)


def array_states(job: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    return [field.split("=", 1)[1] for line in out.stdout.splitlines() for field in line.split()
            if field.startswith("JobState=")]


def test_array_tasks_split_the_manifests(slurm, cleanup_jobs, tmp_path):
    if not TOOL.is_file():
        pytest.skip("tools/preprocess_data.py does not exist yet (issue 4)")
    rows = [f"document number {i}: a short caption about a red square." for i in range(6)]
    manifests = []
    for part in range(3):
        path = tmp_path / "manifests" / f"part{part}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows[part * 2:part * 2 + 2]))
        manifests.append(path)
    out_dir = tmp_path / "shards"
    env = job_env(INPUT=str(tmp_path / "manifests" / "*.jsonl"), OUTPUT_PREFIX=str(out_dir / "text" / "shard"),
                  VQ_DIR=str(tiny_vq(tmp_path / "vq")), EMU3_REPO=str(REPO), MAX_SEQ_LEN="256")
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    proc = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1",
                           f"--output={log_dir}/prep-%A_%a.out", str(SLURM_DIR / "preprocess_array.sbatch")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    track(job)

    def logs():
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(log_dir.glob("*.out")))

    states = wait_for(lambda: (s := array_states(job)) and len(s) == 2 and set(s) <= TERMINAL and s, 180,
                      f"array job {job}", poll=1.0, describe=logs)
    assert states == ["COMPLETED", "COMPLETED"], logs()
    reports = sorted((out_dir / "text" / "reports").glob("task-*-of-2.json"))
    assert [r.name for r in reports] == ["task-0-of-2.json", "task-1-of-2.json"], logs()
    written = sum(json.loads(r.read_text())["documents_written"] for r in reports)
    assert written == len(rows), [json.loads(r.read_text()) for r in reports]
    assert list((out_dir / "text").glob("shard*.idx")) and list((out_dir / "text").glob("shard*.bin"))
