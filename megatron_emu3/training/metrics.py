"""Run metrics: one JSON object per logged step in RUN_DIR/metrics.jsonl, a readable log line, and
TensorBoard when configured. Only the writer on rank 0 writes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

logger = logging.getLogger("megatron_emu3.train")


class MetricsWriter:
    """Appends metrics to `metrics.jsonl` (resumed runs keep appending)."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._tb = _tensorboard_writer(Path(run_dir) / "tensorboard")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, record["step"])
        logger.info(format_line(record))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def format_line(record: dict) -> str:
    """One readable line: step, loss, text/vision loss, lr, grad norm, throughput."""
    parts = [f"step {record['step']}"]
    for key, fmt in (("loss", ".4f"), ("text_loss", ".4f"), ("vision_loss", ".4f"), ("valid_loss", ".4f"), ("lr", ".3e"),
                     ("grad_norm", ".3f"), ("tokens_per_s", ".0f"), ("tflops_per_gpu", ".2f"),
                     ("step_time_s", ".3f")):
        if record.get(key) is not None:
            parts.append(f"{key} {record[key]:{fmt}}")
    return " | ".join(parts)


def _tensorboard_writer(log_dir: Path) -> Optional[object]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        logger.warning("logging.tensorboard=true but the tensorboard package is missing; "
                       "pip install tensorboard (metrics.jsonl is still written)")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(run_dir: str) -> list[dict]:
    """All records of a run's metrics.jsonl."""
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]
