"""DPO loss (Rafailov et al. 2023) plus a weighted next-token loss, as global-batch sums.

For a pair with policy log-probabilities of the completions ``pc`` (chosen), ``pr`` (rejected) and the
frozen reference's ``rc``, ``rr``:

    margin = (pc - rc) - (pr - rr)          z = beta * margin
    dpo    = -log sigmoid(z)                (log 2 when policy = reference)
    loss   = mean over pairs of dpo  +  sft_weight * (sum of chosen-completion CE / chosen tokens)

As in pretraining (`training/loss.py`), every micro-batch returns *sums*; the global pair and token
counts are known from the data before any forward, so each micro-batch backpropagates its share and
gradients are summed over data-parallel ranks: the result does not depend on how the batch is cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_STAT_KEYS = ("dpo_sum", "sft_sum", "pairs", "sft_tokens", "margin_sum", "correct", "chosen_logp_sum",
                 "rejected_logp_sum")


def sequence_logps(ce: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p over the completion tokens of each row: ``-sum(ce * mask)`` [rows] (float64)."""
    return -(ce.double() * completion_mask.double()).sum(-1)


def dpo_pair_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair DPO losses, per-pair margins) from sequence log-probabilities [pairs]."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin), margin


def dpo_sums(policy_ce: torch.Tensor, ref_ce: torch.Tensor, completion_mask: torch.Tensor, pairs: int,
             beta: float) -> dict[str, torch.Tensor]:
    """Local sums of one micro-batch whose rows are [chosen x pairs; rejected x pairs].

    `policy_ce` keeps its graph (``dpo_sum`` and ``sft_sum`` are differentiable); the rest is detached.
    """
    mask = completion_mask.double()
    policy = sequence_logps(policy_ce, mask)
    ref = sequence_logps(ref_ce.detach(), mask)
    losses, margin = dpo_pair_losses(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], beta)
    chosen_ce = (policy_ce[:pairs].double() * mask[:pairs]).sum()
    return {
        "dpo_sum": losses.sum(),
        "sft_sum": chosen_ce,
        "pairs": torch.tensor(float(pairs), dtype=torch.float64, device=policy_ce.device),
        "sft_tokens": mask[:pairs].sum(),
        "margin_sum": margin.detach().sum(),
        "correct": (margin.detach() > 0).double().sum(),
        "chosen_logp_sum": policy[:pairs].detach().sum(),
        "rejected_logp_sum": policy[pairs:].detach().sum(),
    }


def stack_dpo_sums(sums: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([sums[k].detach().double() for k in DPO_STAT_KEYS])


def dpo_metrics(total: torch.Tensor, sft_weight: float) -> dict[str, float]:
    """Metrics of the global batch from the all-reduced stacked sums."""
    s = dict(zip(DPO_STAT_KEYS, total.tolist()))
    dpo = s["dpo_sum"] / s["pairs"]
    sft = s["sft_sum"] / s["sft_tokens"]
    return {"loss": dpo + sft_weight * sft, "dpo_loss": dpo, "sft_loss": sft, "margin": s["margin_sum"] / s["pairs"],
            "accuracy": s["correct"] / s["pairs"], "chosen_logp": s["chosen_logp_sum"] / s["pairs"],
            "rejected_logp": s["rejected_logp_sum"] / s["pairs"], "pairs": int(s["pairs"])}
