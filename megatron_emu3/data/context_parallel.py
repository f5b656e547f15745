"""Zigzag context-parallel split of a packed sample, and its inverse (for tests and gathering).

For CP size c the sequence (length S, divisible by 2c) is cut into 2c equal chunks; rank r keeps chunks
r and 2c-1-r, so with causal attention every rank gets the same amount of work. All five sample
fields are split with the same indices. Nothing is shifted: labels are already aligned with tokens
in the sample, so each rank's (token, label, weight) triples are exactly the original ones, and the
sum of ``w * CE`` over ranks equals the unsplit sum. ``segment_ids`` and ``position_ids`` keep their
global values, which is what a ring attention needs to mask across documents (a rank's keys and
queries carry their global segment ids); per-rank ``cu_seqlens`` for a varlen kernel are derived from
the kept chunks. Kernels that need every document padded to a multiple of 2c (TE's THD format) pad
the documents before this split: see `pad_documents_for_cp`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from megatron_emu3.data.sample import SAMPLE_KEYS
from megatron_emu3.data.tokens import PAD


def zigzag_indices(seq_len: int, cp_size: int, cp_rank: int) -> np.ndarray:
    """Positions (int64) of the full sequence that CP rank `cp_rank` holds, in order."""
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ValueError(f"bad context-parallel layout: cp_rank={cp_rank}, cp_size={cp_size}")
    if seq_len % (2 * cp_size):
        raise ValueError(f"sequence length {seq_len} is not divisible by 2 x context_parallel_size = "
                         f"{2 * cp_size}; choose data.seq_length as a multiple of {2 * cp_size}")
    chunk = seq_len // (2 * cp_size)
    first = np.arange(cp_rank * chunk, (cp_rank + 1) * chunk)
    second = np.arange((2 * cp_size - 1 - cp_rank) * chunk, (2 * cp_size - cp_rank) * chunk)
    return np.concatenate([first, second]).astype(np.int64)


def split_for_cp(sample: Mapping, cp_size: int, cp_rank: int) -> dict:
    """This rank's part of a sample or batch (numpy or torch, sequence on the last axis)."""
    seq_len = next(iter(sample.values())).shape[-1]
    idx = zigzag_indices(seq_len, cp_size, cp_rank)
    out = {}
    for key, value in sample.items():
        if hasattr(value, "index_select"):  # torch tensor
            import torch

            out[key] = value.index_select(-1, torch.as_tensor(idx, device=value.device))
        else:
            out[key] = np.asarray(value)[..., idx]
    return out


def merge_from_cp(parts: Sequence[Mapping], cp_size: int) -> dict:
    """The inverse of `split_for_cp`: the full sample from all ranks' parts (numpy)."""
    if len(parts) != cp_size:
        raise ValueError(f"need {cp_size} rank parts to reassemble, got {len(parts)}")
    local = next(iter(parts[0].values())).shape[-1]
    seq_len = local * cp_size
    out = {}
    for key in parts[0]:
        first = np.asarray(parts[0][key])
        full = np.empty(first.shape[:-1] + (seq_len,), dtype=first.dtype)
        for r, part in enumerate(parts):
            full[..., zigzag_indices(seq_len, cp_size, r)] = np.asarray(part[key])
        out[key] = full
    return out


def local_cu_seqlens(segment_ids: np.ndarray) -> np.ndarray:
    """Boundaries of the document runs in one rank's (non-contiguous) part: a new run starts where the
    segment changes or where the second zigzag chunk begins."""
    segment_ids = np.asarray(segment_ids)
    half = len(segment_ids) // 2
    change = np.flatnonzero(np.diff(segment_ids)) + 1
    starts = np.union1d(change, [half]) if half else change
    return np.concatenate([[0], starts, [len(segment_ids)]]).astype(np.int32)


def pad_documents_for_cp(sample: Mapping[str, np.ndarray], cp_size: int) -> dict[str, np.ndarray]:
    """Pad every segment to a multiple of 2c (PAD tokens, weight 0, same segment, positions continuing),
    for kernels that split each document separately (TE THD). The result is longer than the sample by
    the padding; the caller chooses seq_len with room for it or drops trailing pad segment tokens."""
    m = 2 * cp_size
    seg = np.asarray(sample["segment_ids"])
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(seg)) + 1, [len(seg)]])
    pieces = {k: [] for k in SAMPLE_KEYS}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        extra = (-(hi - lo)) % m
        for key in SAMPLE_KEYS:
            part = np.asarray(sample[key][lo:hi])
            if key in ("tokens", "labels"):
                fill = np.full(extra, PAD, dtype=part.dtype)
            elif key == "loss_weights":
                fill = np.zeros(extra, dtype=part.dtype)
            elif key == "position_ids":
                fill = part[-1] + 1 + np.arange(extra, dtype=part.dtype)
            else:
                fill = np.full(extra, part[-1], dtype=part.dtype)
            pieces[key].append(np.concatenate([part, fill]))
    return {k: np.concatenate(v).astype(SAMPLE_KEYS[k]) for k, v in pieces.items()}
