"""Packing whole documents into ``seq_len + 1`` token windows: the plan (pure numpy) and its samples.

A *plan* says, for every packed window (bin), which pieces of which documents it holds:
``sample_offsets`` (CSR, int64 [S+1]) over the piece arrays ``piece_doc`` (int64), ``piece_start``
(int64, token offset inside the document) and ``piece_len`` (int32).

Algorithm: **windowed best-fit decreasing** (BFD). Documents arrive in a seeded shuffled order; each
window of ``window`` consecutive items is sorted longest first and every item goes into the open bin
whose free space is the *smallest that still fits* (a new bin when none does). Why BFD and not
first-fit: both give the same worst-case bound (11/9 OPT + 6/9), but best-fit leaves the large free
spaces open for the next large item, which matters for our mixes (a 512^2 image is ~4,180 of 5,121
tokens; video documents are 20k-130k of 131,073), and with the free spaces kept in a sorted list it is
O(log bins) per item instead of first-fit's scan. Why windows: packing needs the whole window sorted,
so a window bounds memory and keeps documents near their shuffled position (the order stays random
across the epoch); 10,000 documents already packs within a few per mille of a global sort.

Rules the plan keeps (tests check them):
- A vision document (any kind but text) is never split: it is placed whole or not at all. One longer
  than the window is rejected before packing (the caller counts and logs or raises).
- A text document longer than the window is split into pieces of ``seq_len + 1`` tokens that overlap
  by one token (stride ``seq_len``, as megatron-core's GPTDataset cuts its windows), so every label of
  the document is trained exactly once; a remaining tail of >= 2 tokens is an ordinary item that
  may share a bin. The overlapping token is the documented exception to "every token once per epoch":
  it appears as the last token of one piece (an input) and the first of the next (never a label).
- Every other document is one piece; each piece starts a new segment (position ids restart at 0).
- Opt-in ``text_fill`` (`fill_gaps_with_text`): when vision documents leave gaps that whole text
  documents cannot fill (image-heavy blends at 5,120: ~6 % pads), text-only windows are dissolved and
  their text is cut into those gaps with the same one-token overlap. Pads drop to ~0; the price is that
  some text documents are split (measured in docs/benchmarks.md). Vision documents stay whole.

`assemble_sample` turns one bin's pieces into a training sample (the contract in `sample.py`).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from megatron_emu3.data.loss_weights import LossWeightTable
from megatron_emu3.data.sample import SAMPLE_KEYS
from megatron_emu3.data.tokens import PAD

DEFAULT_WINDOW = 10_000
_SHIFT = 32
_MASK = (1 << _SHIFT) - 1


@dataclass
class PackingPlan:
    """Bins of document pieces (CSR). Bin b holds pieces ``sample_offsets[b]:sample_offsets[b+1]``."""

    sample_offsets: np.ndarray
    piece_doc: np.ndarray
    piece_start: np.ndarray
    piece_len: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_offsets) - 1

    def pieces(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.sample_offsets[b], self.sample_offsets[b + 1]
        return self.piece_doc[lo:hi], self.piece_start[lo:hi], self.piece_len[lo:hi]

    def pad_tokens(self, capacity: int) -> int:
        return int(len(self) * capacity - int(self.piece_len.sum(dtype=np.int64)))


def split_documents(lengths: np.ndarray, splittable: np.ndarray, capacity: int):
    """Cut documents into packable items: (item_doc_position, item_start, item_len), vectorised.

    ``lengths[i] > capacity`` with ``splittable[i]`` gives full pieces ``[k*(capacity-1), +capacity)``
    and a tail of the remaining tokens (dropped only when it is the single overlap token). Unsplittable
    documents longer than ``capacity`` raise ValueError (the caller filters them first).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    splittable = np.asarray(splittable, dtype=bool)
    if capacity < 2:
        raise ValueError(f"window capacity must be at least 2 tokens (seq_len >= 1), got {capacity}")
    if np.any(lengths < 1):
        bad = int(np.flatnonzero(lengths < 1)[0])
        raise ValueError(f"document at position {bad} has length {lengths[bad]}; documents need >= 1 token")
    too_long = (lengths > capacity) & ~splittable
    if np.any(too_long):
        bad = int(np.flatnonzero(too_long)[0])
        raise ValueError(
            f"vision document at position {bad} has {lengths[bad]} tokens > window {capacity}; "
            "it cannot be split: filter it out (and count it) before packing"
        )
    stride = capacity - 1
    long_ = lengths > capacity
    # pieces of a long doc: starts 0, stride, ...; last start s has len L - s >= 2
    n_pieces = np.ones(len(lengths), dtype=np.int64)
    n_pieces[long_] = (lengths[long_] - 2) // stride + 1
    doc_pos = np.repeat(np.arange(len(lengths), dtype=np.int64), n_pieces)
    first = np.cumsum(n_pieces) - n_pieces
    k = np.arange(len(doc_pos), dtype=np.int64) - np.repeat(first, n_pieces)
    start = k * stride
    length = np.minimum(lengths[doc_pos] - start, capacity)
    return doc_pos, start, length


def best_fit_decreasing(lengths: np.ndarray, capacity: int, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """Bin index (int64) of every item, bins numbered from 0 in opening order, windowed BFD.

    Items must each fit (``1 <= length <= capacity``). Free spaces of open bins live in one sorted
    Python list of ``free << 32 | bin``: ``bisect`` finds the smallest free space >= the item.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"items must have 1..{capacity} tokens, got {lengths.min()}..{lengths.max()}")
    if window < 1:
        raise ValueError(f"packing window must be >= 1 document, got {window}")
    out = np.empty(len(lengths), dtype=np.int64)
    n_bins = 0
    for w0 in range(0, len(lengths), window):
        chunk = lengths[w0:w0 + window]
        order = np.argsort(-chunk, kind="stable")
        sizes = chunk[order].tolist()
        smallest = sizes[-1]
        free: list[int] = []
        local = [0] * len(sizes)
        opened = 0
        for j, size in enumerate(sizes):
            pos = bisect_left(free, size << _SHIFT)
            if pos < len(free):
                key = free.pop(pos)
                b, left = key & _MASK, (key >> _SHIFT) - size
            else:
                b, left = opened, capacity - size
                opened += 1
            local[j] = b
            if left >= smallest:
                insort(free, (left << _SHIFT) | b)
        bins = np.empty(len(sizes), dtype=np.int64)
        bins[order] = np.asarray(local, dtype=np.int64)
        out[w0:w0 + len(sizes)] = bins + n_bins
        n_bins += opened
    return out


def fill_gaps_with_text(doc_pos, start, length, bins, splittable_item, capacity: int, min_gap: int = 16):
    """Opt-in (``text_fill``): pour text into the gaps of windows that hold a vision document.

    Text-only bins are dissolved, least full first, until their tokens cover the gaps (>= `min_gap`)
    left beside vision documents; their pieces are poured into those gaps in order, cut where a gap
    ends with the same one-token overlap as long documents (every label still trained exactly once),
    and what is left is cut into full windows. Vision documents stay whole; text documents in the
    dissolved bins may now be split. Returns new (doc_pos, start, length, bins).
    """
    n_bins = int(bins.max()) + 1 if len(bins) else 0
    used = np.bincount(bins, weights=length, minlength=n_bins).astype(np.int64)
    vision_bin = np.bincount(bins, weights=(~splittable_item).astype(np.float64), minlength=n_bins) > 0
    gap = np.where(vision_bin, capacity - used, 0)
    gap_bins = np.flatnonzero(gap >= max(2, min_gap))
    need = int(gap[gap_bins].sum())
    text_bins = np.flatnonzero(~vision_bin)
    if need == 0 or len(text_bins) == 0:
        return doc_pos, start, length, bins
    text_bins = text_bins[np.argsort(used[text_bins], kind="stable")]
    cover = np.searchsorted(np.cumsum(used[text_bins]), need, side="left") + 1
    dissolve = np.zeros(n_bins, dtype=bool)
    dissolve[text_bins[:cover]] = True
    keep = ~dissolve[bins]
    stream = [(int(d), int(s), int(n)) for d, s, n in zip(doc_pos[~keep], start[~keep], length[~keep])]
    out_d, out_s, out_n, out_b = [], [], [], []

    def pour(b: int, room: int, k: int, piece):
        """Fill `room` tokens of bin b from the stream at k; returns (k, leftover piece or None)."""
        while room >= 2 and (piece is not None or k < len(stream)):
            if piece is None:
                piece, k = stream[k], k + 1
            d, s, n = piece
            take = min(n, room)
            out_d.append(d)
            out_s.append(s)
            out_n.append(take)
            out_b.append(b)
            room -= take
            piece = (d, s + take - 1, n - take + 1) if take < n else None
        return k, piece

    k, piece = 0, None
    for b in gap_bins.tolist():
        k, piece = pour(b, int(gap[b]), k, piece)
    next_bin = n_bins
    while piece is not None or k < len(stream):
        k, piece = pour(next_bin, capacity, k, piece)
        next_bin += 1
    new = (np.asarray(out_d, np.int64), np.asarray(out_s, np.int64), np.asarray(out_n, np.int64),
           np.asarray(out_b, np.int64))
    merged = [np.concatenate([a[keep], b]) for a, b in zip((doc_pos, start, length, bins), new)]
    # renumber bins densely (dissolved ones vanish)
    merged[3] = np.unique(merged[3], return_inverse=True)[1].astype(np.int64)
    return tuple(merged)


def pack_documents(doc_ids: np.ndarray, lengths: np.ndarray, splittable: np.ndarray, capacity: int,
                   window: int = DEFAULT_WINDOW, text_fill: bool = False) -> PackingPlan:
    """The plan for documents ``doc_ids`` (in the order given) packed into windows of ``capacity``."""
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    splittable = np.asarray(splittable, dtype=bool)
    doc_pos, start, length = split_documents(lengths, splittable, capacity)
    if not text_fill:
        bins = best_fit_decreasing(length, capacity, window)
    else:  # window by window, so the Python-level pouring stays bounded in memory
        parts, n_bins = [], 0
        for w0 in range(0, len(length), window):
            sl = slice(w0, w0 + window)
            filled = fill_gaps_with_text(doc_pos[sl], start[sl], length[sl],
                                         best_fit_decreasing(length[sl], capacity, window),
                                         splittable[doc_pos[sl]], capacity)
            parts.append(filled[:3] + (filled[3] + n_bins,))
            n_bins += int(filled[3].max()) + 1
        bins = np.zeros(0, np.int64)
        if parts:
            doc_pos, start, length, bins = (np.concatenate(a) for a in zip(*parts))
    order = np.argsort(bins, kind="stable")  # inside a bin, pieces keep their shuffled order
    counts = np.bincount(bins, minlength=int(bins.max()) + 1 if len(bins) else 0)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return PackingPlan(offsets, doc_ids[doc_pos[order]], start[order], length[order].astype(np.int32))


def concat_plans(plans: Sequence[PackingPlan]) -> PackingPlan:
    """One plan whose bins are those of `plans` in turn."""
    if not plans:
        return PackingPlan(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros(0, np.int32))
    shifts = np.cumsum([0] + [len(p.piece_doc) for p in plans[:-1]])
    offsets = np.concatenate([plans[0].sample_offsets[:1]] + [p.sample_offsets[1:] + s for p, s in zip(plans, shifts)])
    return PackingPlan(offsets, np.concatenate([p.piece_doc for p in plans]),
                       np.concatenate([p.piece_start for p in plans]),
                       np.concatenate([p.piece_len for p in plans]))


def assemble_sample(pieces: Sequence[np.ndarray], kinds: Sequence[int], seq_len: int,
                    table: LossWeightTable) -> dict[str, np.ndarray]:
    """One training sample from the token pieces of one bin (each a document or a text piece).

    The window is the pieces in order, then PAD tokens to ``seq_len + 1`` (their own segment).
    tokens = window[:-1], labels = window[1:]; the weight of position i is the table weight of its
    label (kind of the label's document, class of the label token) and 0 where the label belongs to
    another segment (the last token of each piece) or is a pad.
    """
    capacity = seq_len + 1
    lens = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    used = int(lens.sum())
    if used > capacity:
        raise ValueError(f"pieces hold {used} tokens, more than the window of {capacity}")
    n_pad = capacity - used
    window = np.empty(capacity, dtype=np.int64)
    if len(pieces):
        window[:used] = np.concatenate(pieces)
    window[used:] = PAD
    seg_lens = np.append(lens, n_pad) if n_pad else lens
    n_seg = len(seg_lens)
    segments = np.repeat(np.arange(n_seg, dtype=np.int32), seg_lens)
    seg_start = np.cumsum(seg_lens) - seg_lens
    positions = np.arange(capacity, dtype=np.int64) - np.repeat(seg_start, seg_lens)
    token_kind = np.repeat(np.asarray(list(kinds) + [0] * (n_seg - len(pieces)), dtype=np.int64), seg_lens)
    token_w = table.token_weights(window, token_kind, segments, seg_start)
    if n_pad:
        token_w[used:] = 0.0
    weights = np.where(segments[1:] == segments[:-1], token_w[1:], 0.0).astype(np.float32)
    sample = {
        "tokens": window[:-1],
        "labels": window[1:],
        "loss_weights": weights,
        "position_ids": positions[:-1],
        "segment_ids": segments[:-1],
    }
    return {k: np.ascontiguousarray(v, dtype=SAMPLE_KEYS[k]) for k, v in sample.items()}
