"""One rank's micro-batch, laid out for its attention backend's input format.

`mask` and `segments` (SDPA, flash/varlen, ring attention): whole samples, or this context-parallel
rank's zigzag part of every sample. `thd` (Transformer Engine): the samples end to end as one packed
row, every document padded and split over CP ranks (`thd.py`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from megatron_emu3.batch.context_parallel import split_for_cp
from megatron_emu3.batch.inputs import INPUT_FORMATS
from megatron_emu3.batch.thd import thd_micro_batch
from megatron_emu3.data.sample import collate


def rank_micro_batch(samples: Sequence[Mapping[str, np.ndarray]], input_format: str, device, cp_size: int = 1,
                     cp_rank: int = 0, tp_for_sequence_parallel: int = 1) -> dict[str, torch.Tensor]:
    """Collate `samples` into this rank's micro-batch on `device`."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown model input format {input_format!r}; one of {INPUT_FORMATS}")
    if input_format == "thd":
        batch = thd_micro_batch(collate(list(samples)), cp_size, cp_rank, tp_for_sequence_parallel)
    else:
        if cp_size > 1:
            samples = [split_for_cp(sample, cp_size, cp_rank) for sample in samples]
        batch = collate(list(samples))
    return {k: v.to(device) for k, v in batch.items()}
