"""Packed (THD) micro-batches for Transformer Engine attention, with and without context parallelism.

TE's THD format lays a micro-batch's documents end to end as one row of tokens; `cu_seqlens` marks
where each document starts, so attention never crosses a document. Under context parallelism TE
splits **every document** separately into 2c chunks and rank r keeps chunks r and 2c-1-r of each
(the balanced zigzag, per document; TE's ``thd_get_partitioned_indices``), and megatron-core's THD
RoPE picks each rank's rotary angles the same way. Each document must then be a multiple of 2c
tokens, so `thd_micro_batch`:

1. lays the b samples end to end (documents never cross a sample boundary, so this changes nothing);
2. pads every document *at its end* to a multiple of 2c (`batch/context_parallel.py::pad_documents`:
   PAD tokens of loss weight 0, same segment, positions continuing), and the last one further so that each rank's share divides by
   the tensor-parallel size under sequence parallelism;
3. keeps this rank's tokens (`thd_partition_indices`).

Padding sits after the document's last real token, so under causal attention no real token sees it
and its own outputs carry weight 0: the padded boundaries serve as both ``cu_seqlens`` and
``cu_seqlens_padded`` (TE's padding-between-sequences path stays off and padded outputs are
well-defined numbers, never uninitialised memory that could turn a 0-weighted loss into NaN).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from megatron_emu3.batch.context_parallel import pad_documents, zigzag_indices
from megatron_emu3.data.sample import SAMPLE_KEYS


def flat_document_bounds(segment_ids: torch.Tensor) -> torch.Tensor:
    """Start offsets of every document of segment ids [b, s] laid end to end, plus b*s at the end."""
    b, s = segment_ids.shape
    flat = (segment_ids.to(torch.int64) + torch.arange(b, device=segment_ids.device)[:, None] * (s + 1)).reshape(-1)
    starts = torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1
    return torch.cat([flat.new_zeros(1), starts, flat.new_tensor([b * s])])


def padded_lengths(lengths: list[int], cp_size: int, tp_for_sequence_parallel: int = 1) -> list[int]:
    """Document lengths padded to multiples of 2*cp (cp > 1), the last one grown until the total is a
    multiple of cp * tp_for_sequence_parallel as well (each rank's share must split over TP ranks)."""
    chunk = 2 * cp_size if cp_size > 1 else 1
    padded = [n + (-n) % chunk for n in lengths]
    total_multiple = math.lcm(chunk, cp_size * tp_for_sequence_parallel)
    while sum(padded) % total_multiple:
        padded[-1] += chunk
    return padded


def thd_partition_indices(cu_seqlens_padded: torch.Tensor, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Positions (int64, in order) of the packed row that CP rank `cp_rank` keeps: chunks r and 2c-1-r
    of every document (each a multiple of 2c long). Same contract as TE's thd_get_partitioned_indices."""
    if cp_size == 1:
        return torch.arange(int(cu_seqlens_padded[-1]), device=cu_seqlens_padded.device)
    parts = []
    bounds = cu_seqlens_padded.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if (end - start) % (2 * cp_size):
            raise ValueError(f"document [{start}, {end}) is {end - start} tokens, not a multiple of "
                             f"2 x context_parallel_size = {2 * cp_size}; pad it with thd_micro_batch")
        parts.append(zigzag_indices(end - start, cp_size, cp_rank) + start)
    return torch.from_numpy(np.concatenate(parts)).to(cu_seqlens_padded.device)


def thd_micro_batch(batch: dict[str, torch.Tensor], cp_size: int = 1, cp_rank: int = 0,
                    tp_for_sequence_parallel: int = 1) -> dict[str, torch.Tensor]:
    """This CP rank's THD micro-batch from a collated CPU batch of full samples [b, s].

    Returns the five sample fields as [1, t] (t = this rank's tokens), ``cu_seqlens`` (int32, the
    padded document boundaries of the whole row, before the split, as TE wants them) and
    ``max_seqlen`` (0-d int64: the longest padded document).
    """
    bounds = flat_document_bounds(batch["segment_ids"]).tolist()
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    padded = padded_lengths(lengths, cp_size, tp_for_sequence_parallel)
    row = {key: value.reshape(-1).numpy() for key, value in batch.items() if key in SAMPLE_KEYS}
    if padded != lengths:
        row = pad_documents(row, bounds, padded)
    cu = torch.tensor([0] + np.cumsum(padded).tolist(), dtype=torch.int32)
    keep = thd_partition_indices(cu, cp_size, cp_rank).numpy()
    out = {key: torch.from_numpy(np.ascontiguousarray(value[keep]))[None] for key, value in row.items()}
    out["cu_seqlens"] = cu
    out["max_seqlen"] = torch.tensor(max(padded), dtype=torch.int64)
    return out
