"""The zigzag split of context parallelism, the one implementation (numpy indices, torch views of them).

For CP size c a sequence of length S (divisible by 2c) is cut into 2c equal chunks; rank r keeps chunks
r and 2c-1-r (in that order), so with causal attention every rank gets the same amount of work. The
data feed splits whole samples this way for ring attention (`context_parallel.py`), Transformer
Engine's THD path splits every document this way (`thd.py`), and ring attention plans its blocks from
the same chunk indices (`model/ring_attention.py`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def zigzag_chunks(cp_rank: int, cp_size: int) -> tuple[int, int]:
    """The two global chunk indices (of 2 * cp_size) that CP rank `cp_rank` holds, in local order."""
    return cp_rank, 2 * cp_size - 1 - cp_rank


def zigzag_indices(seq_len: int, cp_size: int, cp_rank: int) -> np.ndarray:
    """Positions (int64) of the full sequence that CP rank `cp_rank` holds, in order."""
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ValueError(f"bad context-parallel layout: cp_rank={cp_rank}, cp_size={cp_size}")
    if seq_len % (2 * cp_size):
        raise ValueError(f"sequence length {seq_len} is not divisible by 2 x context_parallel_size = "
                         f"{2 * cp_size}; choose data.seq_length as a multiple of {2 * cp_size}")
    chunk = seq_len // (2 * cp_size)
    first, second = zigzag_chunks(cp_rank, cp_size)
    return np.concatenate([np.arange(first * chunk, (first + 1) * chunk),
                           np.arange(second * chunk, (second + 1) * chunk)]).astype(np.int64)


def zigzag_positions(seq_len: int, cp_rank: int, cp_size: int, device=None) -> torch.Tensor:
    """`zigzag_indices` as a torch tensor on `device`."""
    return torch.from_numpy(zigzag_indices(seq_len, cp_size, cp_rank)).to(device)


def zigzag_split(x: torch.Tensor, cp_rank: int, cp_size: int, dim: int = 1) -> torch.Tensor:
    """CP rank `cp_rank`'s local part of full-sequence tensor `x` (sequence along `dim`)."""
    return x.index_select(dim, zigzag_positions(x.shape[dim], cp_rank, cp_size, x.device))


def zigzag_merge(parts: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Inverse of `zigzag_split`: the full sequence from every CP rank's local part, in rank order."""
    cp_size = len(parts)
    chunks: list[Optional[torch.Tensor]] = [None] * (2 * cp_size)
    for rank, part in enumerate(parts):
        first, second = zigzag_chunks(rank, cp_size)
        chunks[first], chunks[second] = part.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)
