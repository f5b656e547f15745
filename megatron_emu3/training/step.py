"""One optimizer step over a global batch: forward/backward of every micro-batch, then update.

The loss is ``sum(w * CE) / sum(w)`` over the whole global batch (all micro-batches and all data-
and context-parallel ranks; see `training/loss.py`). The global weight sum is known before any
forward (weights come from the data), so each micro-batch backpropagates ``sum_mb(w * CE) / W_global``
and gradients are summed (not averaged) over data-parallel ranks (`calculate_per_token_loss=True` in
`to_mcore`). The result does not depend on how the global batch is cut into micro-batches or ranks.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads

from megatron_emu3.model.build import unwrap
from megatron_emu3.model.inputs import model_inputs
from megatron_emu3.training.loss import STAT_KEYS, global_loss, loss_sums, stack_sums


def forward_ce(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token cross-entropy [b, s] (fp32) of one micro-batch."""
    ce = model(**model_inputs(batch, unwrap(model).input_format))
    return ce.float().reshape(batch["labels"].shape)


def micro_batch_sync(model, index: int, count: int):
    """Context for micro-batch `index` of `count`: gradient buckets are reduced (overlapped with the
    backward when parallel.overlap_grad_reduce) only during the last one; earlier ones accumulate."""
    return contextlib.nullcontext() if index == count - 1 else model.no_sync()


def sync_params(model) -> None:
    """Finish the parameter all-gathers that `parallel.overlap_param_gather` defers to the next
    forward, so every rank's parameters are current (before saving or reading them)."""
    if model.ddp_config.overlap_param_gather:
        model.start_param_sync(force_sync=True)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(tensor, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return tensor


def train_step(model, optimizer, micro_batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Run one optimizer step; returns loss, text/vision loss, grad norm and token counts."""
    device = micro_batches[0]["tokens"].device
    model.zero_grad_buffer()
    optimizer.zero_grad()
    total_weight = _all_reduce_sum(sum(mb["loss_weights"].double().sum() for mb in micro_batches).to(device))
    if total_weight.item() <= 0:
        raise RuntimeError("the global batch has no token with loss weight > 0; check data.loss_policy and the data")
    stats = torch.zeros(len(STAT_KEYS), dtype=torch.float64, device=device)
    for i, mb in enumerate(micro_batches):
        with micro_batch_sync(model, i, len(micro_batches)):
            sums = loss_sums(forward_ce(model, mb), mb["labels"], mb["loss_weights"])
            (sums["weighted_ce"] / total_weight).float().backward()
        stats += stack_sums(sums)
    return apply_update(model, optimizer, global_loss(stats, _all_reduce_sum))


def apply_update(model, optimizer, result: dict) -> dict:
    """Reduce gradients over ranks, step the optimizer, add grad norm (and a skipped update) to `result`."""
    finalize_model_grads([model])
    update_ok, grad_norm, _ = optimizer.step()
    result["grad_norm"] = float(grad_norm) if grad_norm is not None else None
    if not update_ok:
        result["skipped_update"] = True
    return result


@torch.no_grad()
def eval_step(model, micro_batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Validation loss over micro-batches (same normalisation as training, no update)."""
    device = micro_batches[0]["tokens"].device
    stats = torch.zeros(len(STAT_KEYS), dtype=torch.float64, device=device)
    for mb in micro_batches:
        stats += stack_sums(loss_sums(forward_ce(model, mb), mb["labels"], mb["loss_weights"]))
    return global_loss(stats, _all_reduce_sum)
