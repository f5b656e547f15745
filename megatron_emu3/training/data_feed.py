"""From a dataset of samples to this rank's micro-batches of one optimizer step.

Global batch k covers samples [consumed, consumed + global_batch_size) of the dataset's order.
Data-parallel rank r takes a contiguous slice of gbs/dp samples and cuts it into micro-batches, so the
global batch is the same set of samples for every layout. Tensor-parallel ranks read the same
samples. The only state is `consumed_samples`, saved in checkpoints.
"""

from __future__ import annotations

from typing import Sequence

import torch

from megatron_emu3.config.schema import Config
from megatron_emu3.data.sample import collate


def build_train_dataset(cfg: Config):
    """The training dataset named by `data.source`."""
    if cfg.data.source == "synthetic":
        from megatron_emu3.data.synthetic import SyntheticDataset

        return SyntheticDataset(cfg.data.seq_length, cfg.data.synthetic_vocab, cfg.seed)
    raise ValueError(f"data.source={cfg.data.source!r} is not available yet; use data.source=synthetic")


def rank_sample_indices(consumed: int, global_batch: int, dp_rank: int, dp_size: int) -> range:
    """Dataset indices this data-parallel rank trains on in the global batch starting at `consumed`."""
    per_rank = global_batch // dp_size
    start = consumed + dp_rank * per_rank
    return range(start, start + per_rank)


def micro_batches(dataset, indices: Sequence[int], micro_batch_size: int, device) -> list[dict[str, torch.Tensor]]:
    """Collate `indices` into micro-batches on `device`."""
    out = []
    for i in range(0, len(indices), micro_batch_size):
        samples = [dataset[j % len(dataset)] for j in indices[i:i + micro_batch_size]]
        out.append({k: v.to(device) for k, v in collate(samples).items()})
    return out
