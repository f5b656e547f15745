"""Packed (THD) micro-batches for Transformer Engine attention, with and without context parallelism.

TE's THD format lays a micro-batch's documents end to end as one row of tokens; `cu_seqlens` marks
where each document starts, so attention never crosses a document. Under context parallelism TE
splits **every document** separately into 2c chunks and rank r keeps chunks r and 2c-1-r of each
(the balanced zigzag, per document; TE's ``thd_get_partitioned_indices``), and megatron-core's THD
RoPE picks each rank's rotary angles the same way. Each document must then be a multiple of 2c
tokens, so `thd_micro_batch`:

1. lays the b samples end to end (documents never cross a sample boundary, so this changes nothing);
2. pads every document *at its end* to a multiple of 2c with PAD tokens of loss weight 0 (same
   segment, positions continuing), and the last one further so that each rank's share divides by
   the tensor-parallel size under sequence parallelism;
3. keeps this rank's tokens (`thd_partition_indices`).

Padding sits after the document's last real token, so under causal attention no real token sees it
and its own outputs carry weight 0: the padded boundaries serve as both ``cu_seqlens`` and
``cu_seqlens_padded`` (TE's padding-between-sequences path stays off and padded outputs are
well-defined numbers, never uninitialised memory that could turn a 0-weighted loss into NaN).
"""

from __future__ import annotations

import math

import torch

from megatron_emu3.data.tokens import PAD

THD_KEYS = ("tokens", "labels", "loss_weights", "position_ids", "segment_ids")


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
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"bad context-parallel layout: cp_rank={cp_rank}, cp_size={cp_size}")
    parts = []
    bounds = cu_seqlens_padded.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if (end - start) % (2 * cp_size):
            raise ValueError(f"document [{start}, {end}) is {end - start} tokens, not a multiple of "
                             f"2 x context_parallel_size = {2 * cp_size}; pad it with thd_micro_batch")
        chunk = (end - start) // (2 * cp_size)
        for piece in (cp_rank, 2 * cp_size - 1 - cp_rank):
            parts.append(torch.arange(start + piece * chunk, start + (piece + 1) * chunk))
    return torch.cat(parts).to(cu_seqlens_padded.device) if parts else cu_seqlens_padded.new_zeros(0, dtype=torch.int64)


def _pad_document(key: str, part: torch.Tensor, extra: int) -> torch.Tensor:
    if extra == 0:
        return part
    if key in ("tokens", "labels"):
        fill = part.new_full((extra,), PAD)
    elif key == "loss_weights":
        fill = part.new_zeros(extra)
    elif key == "position_ids":
        fill = part[-1] + 1 + torch.arange(extra, dtype=part.dtype, device=part.device)
    else:  # segment_ids: the padding belongs to its document
        fill = part.new_full((extra,), int(part[-1]))
    return torch.cat([part, fill])


def thd_micro_batch(batch: dict[str, torch.Tensor], cp_size: int = 1, cp_rank: int = 0,
                    tp_for_sequence_parallel: int = 1) -> dict[str, torch.Tensor]:
    """This CP rank's THD micro-batch from a collated batch of full samples [b, s].

    Returns the five sample fields as [1, t] (t = this rank's tokens), ``cu_seqlens`` (int32, the
    padded document boundaries of the whole row, before the split, as TE wants them) and
    ``max_seqlen`` (0-d int64: the longest padded document).
    """
    bounds = flat_document_bounds(batch["segment_ids"]).tolist()
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    padded = padded_lengths(lengths, cp_size, tp_for_sequence_parallel)
    cu = torch.tensor([0] + list(torch.tensor(padded).cumsum(0).tolist()), dtype=torch.int32)
    out = {}
    for key in THD_KEYS:
        flat = batch[key].reshape(-1)
        if padded != lengths:
            flat = torch.cat([_pad_document(key, flat[start:end], p - (end - start))
                              for start, end, p in zip(bounds[:-1], bounds[1:], padded)])
        out[key] = flat
    if cp_size > 1:
        keep = thd_partition_indices(cu, cp_size, cp_rank).to(out["tokens"].device)
        out = {key: value.index_select(0, keep) for key, value in out.items()}
    out = {key: value[None] for key, value in out.items()}
    out["cu_seqlens"] = cu.to(batch["tokens"].device)
    out["max_seqlen"] = torch.tensor(max(padded), dtype=torch.int64)
    return out
