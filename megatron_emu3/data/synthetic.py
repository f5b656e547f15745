"""A learnable synthetic token stream: training without any files (smoke tests, parallel checks).

Each sample packs short "documents"; inside a document token t+1 = (t * 5 + 3) mod V, starting from a
random token, so a model can learn the rule and the loss falls. Everything is a pure function of
(seed, sample index), which makes runs under different parallel layouts see identical data.
Samples follow the contract of `megatron_emu3.data.sample`.
"""

from __future__ import annotations

import numpy as np

from megatron_emu3.data.sample import SAMPLE_KEYS


class SyntheticDataset:
    """Infinite-length (size `num_samples`) synthetic packed samples of `seq_len` tokens."""

    def __init__(self, seq_len: int, vocab: int, seed: int, num_samples: int = 10**9, min_doc: int = 8):
        if vocab < 2:
            raise ValueError(f"synthetic vocab must be at least 2, got {vocab}")
        self.seq_len, self.vocab, self.seed, self.num_samples = seq_len, vocab, seed, num_samples
        self.min_doc = max(2, min(min_doc, seq_len + 1))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"synthetic sample {idx} out of range [0, {self.num_samples})")
        rng = np.random.default_rng([self.seed, idx])
        window = np.empty(self.seq_len + 1, dtype=np.int64)
        segments = np.empty(self.seq_len + 1, dtype=np.int32)
        positions = np.empty(self.seq_len + 1, dtype=np.int64)
        start, doc = 0, 0
        while start < self.seq_len + 1:
            length = int(rng.integers(self.min_doc, max(self.min_doc + 1, (self.seq_len + 1) // 2 + 1)))
            length = min(length, self.seq_len + 1 - start)
            token = int(rng.integers(0, self.vocab))
            for i in range(length):
                window[start + i] = token
                token = (token * 5 + 3) % self.vocab
            segments[start:start + length] = doc
            positions[start:start + length] = np.arange(length)
            start, doc = start + length, doc + 1
        labels = window[1:].copy()
        weights = np.ones(self.seq_len, dtype=np.float32)
        # the last token of a document predicts the next document's first token: no loss there
        weights[segments[1:] != segments[:-1]] = 0.0
        sample = {
            "tokens": window[:-1],
            "labels": labels,
            "loss_weights": weights,
            "position_ids": positions[:-1],
            "segment_ids": segments[:-1],
        }
        return {k: np.ascontiguousarray(v, dtype=SAMPLE_KEYS[k]) for k, v in sample.items()}
