"""Loss sums that add up exactly over micro-batches, data-parallel and context-parallel ranks.

The training loss is ``sum(w * CE) / sum(w)`` over the **global** batch. A mean per micro-batch (or
per rank) would weight tokens differently depending on how the batch is cut, so every piece of the
batch returns *sums* only, and one division happens after the sums are added up (all-reduced).

Local sums of one micro-batch (`loss_sums`):
- ``weighted_ce`` = sum(w * CE), ``weight`` = sum(w);
- ``text_ce`` / ``text_count``: unweighted CE sum and count over positions with w > 0 whose label is
  not a vision code (text and structure tokens: SOV, EOL, EOF, meta text, ...);
- ``vision_ce`` / ``vision_count``: the same over positions with w > 0 whose label is a vision code.
Positions with w = 0 (pads, labels across documents, understanding documents' vision blocks, text
under QFT) are in neither. Sums are float64 so that adding them in any order is exact to fp32.

Backward: the global ``sum(w)`` is known from the data before any forward (all-reduce it first),
so each micro-batch backpropagates ``weighted_ce / W_global`` and gradients are *summed* over ranks.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from megatron_emu3.data.tokens import FIRST_VISION_CODE

STAT_KEYS = ("weighted_ce", "weight", "text_ce", "text_count", "vision_ce", "vision_count")


def loss_sums(ce: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Local sums (float64 scalars; ``weighted_ce`` keeps its graph) of one micro-batch [B, S]."""
    if ce.shape != labels.shape or ce.shape != weights.shape:
        raise ValueError(f"ce {tuple(ce.shape)}, labels {tuple(labels.shape)} and loss_weights "
                         f"{tuple(weights.shape)} must have the same shape")
    ce = ce.double()
    w = weights.double()
    counted = weights > 0
    vision = counted & (labels >= FIRST_VISION_CODE)  # every id past the specials is a code, in any layout
    text = counted & ~vision
    return {
        "weighted_ce": (ce * w).sum(),
        "weight": w.sum(),
        "text_ce": torch.where(text, ce.detach(), 0.0).sum(),
        "text_count": text.sum().double(),
        "vision_ce": torch.where(vision, ce.detach(), 0.0).sum(),
        "vision_count": vision.sum().double(),
    }


def stack_sums(sums: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The sums as one float64 vector in `STAT_KEYS` order (detached), ready for one all-reduce."""
    return torch.stack([sums[k].detach().double() for k in STAT_KEYS])


def global_loss(local: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Metrics of the global batch from this rank's stacked sums and a sum-reduction.

    `reduce` sums a tensor over all data- and context-parallel ranks (e.g.
    ``lambda t: (dist.all_reduce(t, group=g), t)[1]``); None for one rank.
    """
    total = reduce(local.clone()) if reduce is not None else local
    s = dict(zip(STAT_KEYS, total.tolist()))
    if s["weight"] <= 0:
        raise RuntimeError("the global batch has no token with loss weight > 0; check data.loss_policy "
                           "and the data (QFT needs image/video generation documents)")
    return {
        "loss": s["weighted_ce"] / s["weight"],
        "text_loss": s["text_ce"] / s["text_count"] if s["text_count"] else None,
        "vision_loss": s["vision_ce"] / s["vision_count"] if s["vision_count"] else None,
        "loss_weight_sum": s["weight"],
        "text_tokens": int(s["text_count"]),
        "vision_tokens": int(s["vision_count"]),
    }
