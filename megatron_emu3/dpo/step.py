"""One DPO optimizer step over a global batch of preference pairs, under the pretraining layout.

A micro-batch of m pairs is 2m rows ``[chosen_1..m; rejected_1..m]`` in the ordinary sample format
(`data/sample.py`): ``tokens = seq[:-1]``, ``labels = seq[1:]``, right-padded to ``data.seq_length``
with pads in their own segment, and ``loss_weights`` = 1 exactly where the label is a completion
token (after the prompt). The policy's per-token CE comes from `training.step.forward_ce` (vocab-
parallel CE over TP ranks, any attention backend); the frozen reference runs the same forward
without gradients. Sums and normalisation: `dpo/loss.py`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_emu3.data.sample import collate
from megatron_emu3.dpo.loss import DPO_STAT_KEYS, dpo_metrics, dpo_sums, stack_dpo_sums
from megatron_emu3.dpo.shards import Preference
from megatron_emu3.training.step import apply_update, forward_ce, micro_batch_sync


def sequence_sample(seq: np.ndarray, prompt_len: int, seq_len: int, where: str) -> dict[str, np.ndarray]:
    """One row in the sample format; loss weight 1 on the completion's labels."""
    if seq.size - 1 > seq_len:
        raise ValueError(f"{where} has {seq.size} tokens but data.seq_length={seq_len} holds at most {seq_len + 1}; "
                         "raise data.seq_length or drop the record")
    n = seq.size - 1
    tokens_ = np.zeros(seq_len, dtype=np.int64)
    labels = np.zeros(seq_len, dtype=np.int64)
    tokens_[:n], labels[:n] = seq[:-1], seq[1:]
    weights = np.zeros(seq_len, dtype=np.float32)
    weights[prompt_len - 1: n] = 1.0  # label j is seq[j + 1]: a completion token when j + 1 >= prompt_len
    segments = np.zeros(seq_len, dtype=np.int32)
    segments[n:] = 1
    positions = np.arange(seq_len, dtype=np.int64)
    positions[n:] -= n
    return {"tokens": tokens_, "labels": labels, "loss_weights": weights, "position_ids": positions,
            "segment_ids": segments}


def preference_batch(prefs: Sequence[Preference], seq_len: int, device, names: Sequence[str] | None = None) -> dict:
    """Rows [chosen...; rejected...] of `prefs` as a batch on `device`."""
    names = names or [f"record {i}" for i in range(len(prefs))]
    rows = [sequence_sample(p.chosen, p.prompt.size, seq_len, f"{n} (chosen)") for p, n in zip(prefs, names)]
    rows += [sequence_sample(p.rejected, p.prompt.size, seq_len, f"{n} (rejected)") for p, n in zip(prefs, names)]
    return {k: v.to(device) for k, v in collate(rows).items()}


def _dp_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return tensor


def dpo_backward(model, reference, micro_batches: Sequence[dict], beta: float, sft_weight: float) -> torch.Tensor:
    """Forward both models, backpropagate every micro-batch's share; returns the global stacked sums."""
    device = micro_batches[0]["tokens"].device
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for mb in micro_batches:
        pairs = mb["tokens"].shape[0] // 2
        counts += torch.stack([torch.tensor(float(pairs), dtype=torch.float64, device=device),
                               mb["loss_weights"][:pairs].double().sum()])
    total_pairs, total_sft_tokens = _dp_sum(counts).tolist()
    if total_sft_tokens <= 0:
        raise RuntimeError("the global batch has no chosen completion token; check the preference set")
    stats = torch.zeros(len(DPO_STAT_KEYS), dtype=torch.float64, device=device)
    for i, mb in enumerate(micro_batches):
        pairs = mb["tokens"].shape[0] // 2
        with torch.no_grad():
            ref_ce = forward_ce(reference, mb)
        with micro_batch_sync(model, i, len(micro_batches)):
            sums = dpo_sums(forward_ce(model, mb), ref_ce, mb["loss_weights"], pairs, beta)
            loss = sums["dpo_sum"] / total_pairs + sft_weight * sums["sft_sum"] / total_sft_tokens
            loss.float().backward()
        stats += stack_dpo_sums(sums)
    return _dp_sum(stats)


def dpo_step(model, reference, optimizer, micro_batches: Sequence[dict], beta: float, sft_weight: float) -> dict:
    """One optimizer step; returns loss, dpo/sft loss, mean margin, accuracy and grad norm."""
    model.zero_grad_buffer()
    optimizer.zero_grad()
    total = dpo_backward(model, reference, micro_batches, beta, sft_weight)
    return apply_update(model, optimizer, dpo_metrics(total, sft_weight))
