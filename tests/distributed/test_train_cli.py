"""The training entry point as users run it: loss falls, dry run, config errors, the plot tool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "examples/recipes/tiny.yaml")


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_tiny_model_loss_falls_and_metrics_are_written(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run("-m", "megatron_emu3.train", "--config", TINY, f"run_dir={run_dir}", "train.iters=25",
                "model.vocab_size=512", "checkpoint.save_at_end=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 26))
    for key in ("loss", "text_loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu"):
        assert all(r[key] is not None for r in records), key
    first = sum(r["loss"] for r in records[:3]) / 3
    last = sum(r["loss"] for r in records[-3:]) / 3
    assert last < first - 1.0, (first, last)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "COMPLETE").is_file()
    plot = _run("tools/plot_loss.py", str(run_dir), "--out", str(tmp_path / "loss.png"))
    assert plot.returncode == 0, plot.stderr
    assert Image.open(tmp_path / "loss.png").size == (900, 500)


def test_dry_run_reports_8b_count_without_building():
    proc = _run("-m", "megatron_emu3.train", "--config", str(REPO / "examples/recipes/emu3_8b_stage2.yaml"), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parameters (unpadded vocab 184,622): 8,492,011,520" in proc.stdout
    assert "padded vocab (multiple of 128 x lcm(8, tp 4), masked): 185,344" in proc.stdout
    assert "world 128 = tp 4 x cp 4 x pp 1 x dp 8" in proc.stdout
    proc = _run("-m", "megatron_emu3.train", "--config", str(REPO / "examples/recipes/emu3_8b_stage1.yaml"),
                "--dry-run", "parallel.pp=4", "parallel.first_stage_layers=7", "parallel.last_stage_layers=7")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pipeline: 4 stages x layers [7, 9, 9, 7] (1F1B)" in proc.stdout and "bubble" in proc.stdout


def test_config_error_exits_2_with_the_key():
    proc = _run("-m", "megatron_emu3.train", "--config", TINY, "parallel.tp=3", "--dry-run", "--world-size", "3")
    assert proc.returncode == 2
    assert "num_attention_heads=4 is not divisible by parallel.tp=3" in proc.stderr


def test_missing_shards_are_refused_before_the_model_is_built(tmp_path):
    proc = _run("-m", "megatron_emu3.train", "--config", TINY, f"run_dir={tmp_path / 'run'}", "data.source=shards",
                f"data.sources=[{{prefix: {tmp_path / 'nothing'}, weight: 1.0}}]")
    assert proc.returncode == 2
    assert f"shard '{tmp_path / 'nothing'}' of data.sources is missing" in proc.stderr
    assert "nothing.idx" in proc.stderr and "tools/preprocess_data.py" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was built or written: no config.yaml, no lock
