"""The contract between data sources and the trainer: what one training sample holds.

Every data source (the synthetic stream, the packed shard dataset) returns samples as a dict of
numpy arrays of one length S = seq_len:

- ``tokens``        int64 [S]  model input ids
- ``labels``        int64 [S]  next-token targets (tokens shifted by one inside the packed window)
- ``loss_weights``  float32 [S] per-token weight w of ``sum(w * CE) / sum(w)``; 0 for pads/masked
- ``position_ids``  int64 [S]  restart at 0 at every document
- ``segment_ids``   int32 [S]  document index inside the sample (non-decreasing); attention only
                               connects tokens of the same segment. Pads form their own segment.

``cu_seqlens`` for varlen kernels is derived from ``segment_ids`` (see `cu_seqlens_from_segments`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

SAMPLE_KEYS = {
    "tokens": np.int64,
    "labels": np.int64,
    "loss_weights": np.float32,
    "position_ids": np.int64,
    "segment_ids": np.int32,
}


def check_sample(sample: Mapping[str, np.ndarray], seq_len: int) -> None:
    """Raise ValueError naming the field when a sample breaks the contract above."""
    for key, dtype in SAMPLE_KEYS.items():
        if key not in sample:
            raise ValueError(f"sample is missing field {key!r}; a sample needs {sorted(SAMPLE_KEYS)}")
        value = np.asarray(sample[key])
        if value.shape != (seq_len,):
            raise ValueError(f"sample field {key!r} has shape {value.shape}, expected ({seq_len},)")
        if value.dtype != dtype:
            raise ValueError(f"sample field {key!r} has dtype {value.dtype}, expected {np.dtype(dtype)}")
    if np.any(np.diff(sample["segment_ids"]) < 0):
        raise ValueError("sample field 'segment_ids' must be non-decreasing")


def collate(samples: list[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch of torch tensors [B, S]."""
    return {key: torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples])) for key in SAMPLE_KEYS}


def cu_seqlens_from_segments(segment_ids: np.ndarray) -> np.ndarray:
    """Cumulative document lengths [0, l0, l0+l1, ..., S] (int32) of one sample's segment ids."""
    segment_ids = np.asarray(segment_ids)
    starts = np.flatnonzero(np.diff(segment_ids)) + 1
    return np.concatenate([[0], starts, [len(segment_ids)]]).astype(np.int32)
