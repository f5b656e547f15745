"""What a training task plugs into the one loop (`trainer.py`): its batches, its loss, its metrics.

Pretraining and QFT are `training/pretrain.py::PretrainTask`; DPO is `dpo/task.py::DPOTask`. The
loop owns everything else (LR schedule, the step, evaluation, saves, signals, resume, `COMPLETE`).

Every loss in this project is a sum over the global batch divided by global counts that are known
from the data before any forward (pretraining: the loss-weight sum; DPO: pairs and completion
tokens). So a task reports *local* normalisers first, the step all-reduces them, and each
micro-batch then backpropagates its exact share: the result does not depend on how the global
batch is cut over micro-batches, data- or context-parallel ranks or pipeline stages.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

import torch


class Task(Protocol):
    name: str
    """Shown in the log ("pretraining", "dpo")."""
    stat_keys: tuple[str, ...]
    """Names of the float64 sums `loss` returns, in order (added up over micro-batches and ranks)."""

    def train_batches(self, consumed: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of the global batch starting at sample `consumed`."""

    def eval_batches(self, evaluation: int, index: int) -> Optional[list[dict[str, torch.Tensor]]]:
        """Micro-batches of held-out batch `index` of evaluation `evaluation`; None: no evaluation."""

    def normalisers(self, micro_batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """This rank's float64 counts that normalise the loss (summed over ranks by the step)."""

    def check_normalisers(self, total: torch.Tensor) -> None:
        """Raise a clear error when the global batch has nothing to learn from."""

    def forward(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """(output tensor of the model, anything `loss` needs besides it)."""

    def loss(self, batch: dict[str, torch.Tensor], output: torch.Tensor, extra: Any,
             normalisers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(this micro-batch's share of the global loss to backpropagate, its stacked float64 sums)."""

    def metrics(self, total: torch.Tensor) -> dict:
        """Metrics of the global batch from the sums added up over micro-batches and ranks."""

    def launch_metrics(self) -> dict:
        """Figures about the data of this launch, logged once with its first step (or {})."""

    def throughput(self, step_time_s: float, world_size: int) -> dict:
        """Throughput figures of one step (tokens/s, model TFLOP/s per GPU), or {}."""
