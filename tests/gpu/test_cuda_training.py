"""On a CUDA machine: the tiny run trains in bf16 (TE spec when installed, else local spec) and the
8B layer shape runs one step. Skipped without CUDA (conftest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
def test_tiny_run_trains_on_cuda_in_bf16(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "megatron_emu3.train", "--config", str(REPO / "examples/recipes/tiny.yaml"),
                           f"run_dir={run_dir}", "train.iters=20", "train.precision=bf16", "model.vocab_size=512"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < records[0]["loss"] - 0.5


@pytest.mark.gpu
def test_8b_layer_shape_one_step(tmp_path):
    proc = subprocess.run([sys.executable, "bench/bench_train_step.py", "--layers", "2", "--steps", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model TFLOP/s" in proc.stdout
