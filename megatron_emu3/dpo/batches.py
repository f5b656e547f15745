"""Preference pairs as micro-batches in the pretraining sample layout.

A micro-batch of m pairs is 2m rows ``[chosen_1..m; rejected_1..m]`` in the ordinary sample format
(`data/sample.py`): ``tokens = seq[:-1]``, ``labels = seq[1:]``, right-padded to ``data.seq_length``
with pads in their own segment, and ``loss_weights`` = 1 exactly where the label is a completion
token (after the prompt). The step itself is the one training step (`dpo/task.py`); sums and
normalisation: `dpo/loss.py`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from megatron_emu3.data.sample import collate
from megatron_emu3.dpo.shards import Preference


def sequence_sample(seq: np.ndarray, prompt_len: int, seq_len: int, where: str) -> dict[str, np.ndarray]:
    """One row in the sample format; loss weight 1 on the completion's labels."""
    if seq.size - 1 > seq_len:
        raise ValueError(f"{where} has {seq.size} tokens but data.seq_length={seq_len} holds at most {seq_len + 1}; "
                         "raise data.seq_length or drop the record")
    n = seq.size - 1
    tokens_ = np.zeros(seq_len, dtype=np.int64)
    labels = np.zeros(seq_len, dtype=np.int64)
    tokens_[:n], labels[:n] = seq[:-1], seq[1:]
    weights = np.zeros(seq_len, dtype=np.float32)
    weights[prompt_len - 1: n] = 1.0  # label j is seq[j + 1]: a completion token when j + 1 >= prompt_len
    segments = np.zeros(seq_len, dtype=np.int32)
    segments[n:] = 1
    positions = np.arange(seq_len, dtype=np.int64)
    positions[n:] -= n
    return {"tokens": tokens_, "labels": labels, "loss_weights": weights, "position_ids": positions,
            "segment_ids": segments}


def preference_batch(prefs: Sequence[Preference], seq_len: int, device, names: Sequence[str] | None = None) -> dict:
    """Rows [chosen...; rejected...] of `prefs` as a batch on `device`."""
    names = names or [f"record {i}" for i in range(len(prefs))]
    rows = [sequence_sample(p.chosen, p.prompt.size, seq_len, f"{n} (chosen)") for p, n in zip(prefs, names)]
    rows += [sequence_sample(p.rejected, p.prompt.size, seq_len, f"{n} (rejected)") for p, n in zip(prefs, names)]
    return {k: v.to(device) for k, v in collate(rows).items()}
