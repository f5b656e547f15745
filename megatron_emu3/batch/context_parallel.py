"""Zigzag context-parallel split of a packed sample, and its inverse (for tests and gathering).

For CP size c the sequence (length S, divisible by 2c) is cut into 2c equal chunks; rank r keeps chunks
r and 2c-1-r, so with causal attention every rank gets the same amount of work. All five sample
fields are split with the same indices. Nothing is shifted: labels are already aligned with tokens
in the sample, so each rank's (token, label, weight) triples are exactly the original ones, and the
sum of ``w * CE`` over ranks equals the unsplit sum. ``segment_ids`` and ``position_ids`` keep their
global values, which is what a ring attention needs to mask across documents (a rank's keys and
queries carry their global segment ids); per-rank ``cu_seqlens`` for a varlen kernel are derived from
the kept chunks. Kernels that split every document on its own (TE's THD format) get documents padded
to a multiple of 2c (`pad_documents`) and split per document instead: see `batch/thd.py`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from megatron_emu3.data.sample import SAMPLE_KEYS, cu_seqlens_from_segments
from megatron_emu3.data.tokens import PAD
from megatron_emu3.batch.zigzag import zigzag_indices, zigzag_split


def split_for_cp(sample: Mapping, cp_size: int, cp_rank: int) -> dict:
    """This rank's part of a sample or batch (numpy or torch, sequence on the last axis)."""
    idx = zigzag_indices(next(iter(sample.values())).shape[-1], cp_size, cp_rank)
    return {key: zigzag_split(value, cp_rank, cp_size, dim=-1) if isinstance(value, torch.Tensor)
            else np.asarray(value)[..., idx] for key, value in sample.items()}


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


def pad_documents(sample: Mapping[str, np.ndarray], bounds: Sequence[int],
                  padded_lengths: Sequence[int]) -> dict[str, np.ndarray]:
    """Pad document k (positions bounds[k]..bounds[k+1]) at its end to padded_lengths[k] tokens: PAD
    tokens and labels, loss weight 0, same segment, positions continuing. The padding is part of its
    document, after its last real token, so causal attention never lets a real token see it."""
    pieces = {k: [] for k in SAMPLE_KEYS}
    for lo, hi, target in zip(bounds[:-1], bounds[1:], padded_lengths):
        extra = target - (hi - lo)
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


def pad_documents_for_cp(sample: Mapping[str, np.ndarray], cp_size: int) -> dict[str, np.ndarray]:
    """Pad every segment of one sample to a multiple of 2c (see `pad_documents`), for kernels that split
    each document separately (TE THD, whose micro-batches `batch/thd.py` builds the same way). The
    result is longer than the sample by the padding."""
    bounds = cu_seqlens_from_segments(sample["segment_ids"]).tolist()
    lengths = np.diff(bounds)
    return pad_documents(sample, bounds, (lengths + (-lengths) % (2 * cp_size)).tolist())
