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
from megatron_emu3.data.context_parallel import split_for_cp
from megatron_emu3.data.sample import collate
from megatron_emu3.model.thd import thd_micro_batch


def build_datasets(cfg: Config):
    """(train, valid or None) datasets named by `data.source`; every rank must call this.

    For shards, the packing plan covers exactly the samples the run consumes (train.iters x global
    batch) and, with evaluation on, the validation batches; it is built once and cached.
    """
    if cfg.data.source == "synthetic":
        from megatron_emu3.data.synthetic import SyntheticDataset

        train = SyntheticDataset(cfg.data.seq_length, cfg.data.synthetic_vocab, cfg.seed)
        valid = SyntheticDataset(cfg.data.seq_length, cfg.data.synthetic_vocab, cfg.seed + 1)
        return train, valid
    from megatron_emu3.data.dataset import build_datasets as build_shard_datasets

    train_samples = cfg.train.iters * cfg.data.global_batch_size
    evaluations = cfg.train.iters // cfg.train.eval_interval if cfg.train.eval_interval else 0
    valid_samples = (evaluations + 1) * cfg.train.eval_iters * cfg.data.global_batch_size if evaluations else None
    train, valid = build_shard_datasets(cfg.data, cfg.data.seq_length, cfg.seed, train_samples, valid_samples)
    layout = train.corpus.layout
    if layout.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"the data's token ids reach {layout.vocab_size - 1} ({layout.describe()}) but "
                         f"model.vocab_size={cfg.model.vocab_size}; set model.vocab_size={layout.vocab_size} "
                         "(or preprocess with the vision tokenizer this model was built for)")
    return train, valid


def build_train_dataset(cfg: Config):
    """The training dataset alone."""
    return build_datasets(cfg)[0]


def rank_sample_indices(consumed: int, global_batch: int, dp_rank: int, dp_size: int) -> range:
    """Dataset indices this data-parallel rank trains on in the global batch starting at `consumed`."""
    per_rank = global_batch // dp_size
    start = consumed + dp_rank * per_rank
    return range(start, start + per_rank)


def micro_batches(dataset, indices: Sequence[int], micro_batch_size: int, device,
                  cp_size: int = 1, cp_rank: int = 0, input_format: str = "mask",
                  tp_for_sequence_parallel: int = 1) -> list[dict[str, torch.Tensor]]:
    """Collate `indices` into micro-batches on `device`: this CP rank's part when cp > 1, the whole
    sample's zigzag split for our attention modules, or every document's split in Transformer
    Engine's packed format (`input_format="thd"`, see `model/thd.py`)."""
    out = []
    for i in range(0, len(indices), micro_batch_size):
        samples = [dataset[j % len(dataset)] for j in indices[i:i + micro_batch_size]]
        if input_format == "thd":
            batch = thd_micro_batch(collate(samples), cp_size, cp_rank, tp_for_sequence_parallel)
        else:
            if cp_size > 1:
                samples = [split_for_cp(sample, cp_size, cp_rank) for sample in samples]
            batch = collate(samples)
        out.append({k: v.to(device) for k, v in batch.items()})
    return out
