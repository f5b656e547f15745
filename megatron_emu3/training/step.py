"""One optimizer step over a global batch: forward/backward of every micro-batch, then update.

The loss is ``sum(w * CE) / sum(w)`` over the whole global batch (all micro-batches and all data-
and context-parallel ranks). The global weight sum is known before any forward (weights come from
the data), so each micro-batch backpropagates ``sum_mb(w * CE) / W_global`` and gradients are summed
(not averaged) over data-parallel ranks (`calculate_per_token_loss=True` in `to_mcore`). The result
does not depend on how the global batch is cut into micro-batches or ranks.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads

from megatron_emu3.data.tokens import FIRST_VISION_CODE
from megatron_emu3.model.build import unwrap
from megatron_emu3.model.inputs import model_inputs

STAT_KEYS = ("weighted_ce", "weight", "text_ce", "text_count", "vision_ce", "vision_count")


def loss_sums(ce: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Local sums of one micro-batch: weighted CE and unweighted text / vision CE over w > 0 tokens."""
    ce = ce.float()
    counted = weights > 0
    vision = counted & (labels >= FIRST_VISION_CODE)
    text = counted & ~vision
    return {
        "weighted_ce": (ce * weights).sum(),
        "weight": weights.sum(),
        "text_ce": (ce * text).sum(),
        "text_count": text.sum().float(),
        "vision_ce": (ce * vision).sum(),
        "vision_count": vision.sum().float(),
    }


def forward_ce(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token cross-entropy [b, s] (fp32) of one micro-batch."""
    thd = getattr(unwrap(model), "uses_thd", False)
    ce = model(**model_inputs(batch, thd))
    return ce.float().reshape(batch["labels"].shape)


def _reduce_group():
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def train_step(model, optimizer, micro_batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Run one optimizer step; returns loss, text/vision loss, grad norm and token counts."""
    device = micro_batches[0]["tokens"].device
    model.zero_grad_buffer()
    optimizer.zero_grad()
    total_weight = sum(mb["loss_weights"].double().sum() for mb in micro_batches).to(device)
    dist.all_reduce(total_weight, group=_reduce_group())
    if total_weight.item() <= 0:
        raise RuntimeError("global batch has no token with loss weight > 0; check data.loss_policy and the data")
    stats = torch.zeros(len(STAT_KEYS), dtype=torch.float64, device=device)
    for mb in micro_batches:
        ce = forward_ce(model, mb)
        sums = loss_sums(ce, mb["labels"], mb["loss_weights"])
        (sums["weighted_ce"] / total_weight.float()).backward()
        stats += torch.stack([sums[k].detach().double() for k in STAT_KEYS])
    finalize_model_grads([model])
    update_ok, grad_norm, _ = optimizer.step()
    dist.all_reduce(stats, group=_reduce_group())
    return summarize(stats, grad_norm, update_ok)


def summarize(stats: torch.Tensor, grad_norm=None, update_ok: bool = True) -> dict[str, float]:
    """Turn all-reduced sums into the logged metrics."""
    s = dict(zip(STAT_KEYS, stats.tolist()))
    out = {
        "loss": s["weighted_ce"] / s["weight"],
        "text_loss": s["text_ce"] / s["text_count"] if s["text_count"] else None,
        "vision_loss": s["vision_ce"] / s["vision_count"] if s["vision_count"] else None,
        "loss_weight_sum": s["weight"],
    }
    if grad_norm is not None:
        out["grad_norm"] = float(grad_norm)
    if not update_ok:
        out["skipped_update"] = True
    return out


@torch.no_grad()
def eval_step(model, micro_batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Validation loss over micro-batches (same normalisation as training, no update)."""
    device = micro_batches[0]["tokens"].device
    stats = torch.zeros(len(STAT_KEYS), dtype=torch.float64, device=device)
    for mb in micro_batches:
        sums = loss_sums(forward_ce(model, mb), mb["labels"], mb["loss_weights"])
        stats += torch.stack([sums[k].double() for k in STAT_KEYS])
    dist.all_reduce(stats, group=_reduce_group())
    return summarize(stats)
