"""Blending several document sources by weight, deterministically, with train/valid splits.

Weights are **token shares**: a blend ``text 0.3 / image-gen 0.5 / image-und 0.2`` feeds the packer
documents whose tokens are 30 / 50 / 20 % of the epoch (to within one document per source). Blending
happens at the *document* level, before packing, so image documents (~4,180 tokens) share windows of
5,121 with text documents instead of leaving 18 % pads.

- Each source has an endless stream of documents: its own epoch k is its documents in the order of a
  permutation seeded by ``(seed, source index, k)``; a source is read from where it stopped.
- One *blend epoch* has a token budget equal to the total tokens of all sources in the split; source i
  takes the next documents of its stream until it has ``w_i x budget`` tokens (so a small source with a
  large weight repeats, a large one with a small weight is seen over several blend epochs). With one
  source, a blend epoch is exactly one pass over its documents.
- The blend epoch's documents are shuffled with ``(seed, epoch)`` before packing.
- Train/valid split: each source's documents are assigned to splits by a permutation seeded with
  ``split_seed`` (not the training seed, so changing the seed never moves a document into the train
  set), in proportions ``split`` (e.g. ``98,2``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid")
_TAG_SPLIT, _TAG_SOURCE, _TAG_BLEND = 11, 12, 13


def _key(seed) -> list[int]:
    """A seed (int or tuple of ints) as the prefix of a numpy SeedSequence entropy list."""
    return [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]


@dataclass(frozen=True)
class DataSourceSpec:
    """One blend component: shard prefixes (globs allowed, e.g. ``data/img/shard_*``) and a weight."""

    prefixes: tuple[str, ...]
    weight: float = 1.0
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.prefixes[0]


@dataclass(frozen=True)
class BlendSpec:
    """Everything that decides the documents a run sees (the trainer maps its data config onto it)."""

    sources: tuple[DataSourceSpec, ...]
    split: tuple[float, ...] = (98.0, 2.0)
    """Train, valid parts per source (any scale; "98,2" == (0.98, 0.02))."""
    vision_loss_weight: float = 0.5
    loss_policy: str = "pretrain"
    cache_dir: str | None = None
    """Where the index cache lives; default ``<directory of the first shard>/index_cache``."""
    oversize_vision: str = "skip"
    """A vision document longer than seq_len + 1: skip (counted and logged) | error."""
    max_oversize_fraction: float = 0.01
    """With skip: refuse to start when a component would lose more than this fraction of its documents."""
    split_seed: int = 1234
    pack_window: int = 10_000
    text_fill: bool = False
    """Opt-in: cut text documents to fill the gaps beside vision documents (see packing.py)."""
    extra: dict = field(default_factory=dict, compare=False)


def parse_split(split) -> tuple[float, ...]:
    """``"98,2"`` / ``[98, 2]`` / ``"1"`` -> fractions (train, valid) summing to 1."""
    parts = [float(p) for p in (split.split(",") if isinstance(split, str) else split)]
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"data.split={split!r}: give train,valid parts such as '98,2'")
    parts += [0.0] * (2 - len(parts))
    if any(p < 0 or not np.isfinite(p) for p in parts) or sum(parts) <= 0:
        raise ValueError(f"data.split={split!r}: parts must be >= 0 with a positive sum")
    total = sum(parts)
    return tuple(p / total for p in parts)


def normalise_weights(weights: Sequence[float], labels: Sequence[str]) -> np.ndarray:
    """Weights as fractions; warns when they did not sum to 1, errors on negative/all-zero."""
    w = np.asarray(weights, dtype=np.float64)
    for value, label in zip(w, labels):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"data source {label!r} has weight {value}; weights must be finite and >= 0")
    if w.sum() <= 0:
        raise ValueError(f"data source weights {w.tolist()} sum to 0; give at least one positive weight")
    if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
        logger.warning("data source weights %s sum to %.6g, not 1: normalised to %s",
                       w.tolist(), w.sum(), np.round(w / w.sum(), 6).tolist())
    return w / w.sum()


def split_documents(num_docs: int, fractions: Sequence[float], split_seed: int, source_index: int) -> list[np.ndarray]:
    """Document indices (sorted) of each split for one source of `num_docs` documents."""
    perm = np.random.default_rng([split_seed, _TAG_SPLIT, source_index]).permutation(num_docs)
    bounds = np.round(np.cumsum([0.0, *fractions]) * num_docs).astype(np.int64)
    bounds[-1] = num_docs
    return [np.sort(perm[bounds[i]:bounds[i + 1]]) for i in range(len(fractions))]


class SourceStream:
    """The endless seeded stream of one source's documents, read in token-budget chunks."""

    def __init__(self, docs: np.ndarray, lengths: np.ndarray, seed, index: int, label: str):
        if len(docs) == 0:
            raise ValueError(f"blend component {label!r} has no documents in this split; remove it from "
                             "the blend, give it data, or change data.split")
        self.docs, self.lengths = np.asarray(docs, np.int64), np.asarray(lengths, np.int64)
        self.seed, self.index, self.label = seed, index, label
        self.position = 0  # documents taken so far, over all of its epochs

    def _epoch_order(self, k: int) -> np.ndarray:
        return np.random.default_rng([*_key(self.seed), _TAG_SOURCE, self.index, k]).permutation(len(self.docs))

    def take(self, tokens: int) -> np.ndarray:
        """The next documents (positions into ``docs``) until at least `tokens` tokens (>= 1 doc if > 0)."""
        out, got, n = [], 0, len(self.docs)
        while got < tokens:
            k, offset = divmod(self.position, n)
            order = self._epoch_order(k)[offset:]
            cum = np.cumsum(self.lengths[order])
            need = tokens - got
            if cum[-1] >= need:
                m = int(np.searchsorted(cum, need, side="left")) + 1
                out.append(order[:m])
                self.position += m
                break
            out.append(order)
            self.position += len(order)
            got += int(cum[-1])
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def blend_epoch(streams: Sequence[SourceStream], weights: np.ndarray, budget: int, seed, epoch: int):
    """Documents of one blend epoch as (source index, position in that source), shuffled."""
    sources, positions = [], []
    for i, (stream, w) in enumerate(zip(streams, weights)):
        if w <= 0:
            continue
        take = stream.take(int(round(w * budget)))
        sources.append(np.full(len(take), i, dtype=np.int64))
        positions.append(take)
    src, pos = np.concatenate(sources), np.concatenate(positions)
    perm = np.random.default_rng([*_key(seed), _TAG_BLEND, epoch]).permutation(len(src))
    return src[perm], pos[perm]
