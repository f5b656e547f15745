"""LR schedule values and the synthetic stream's contract."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_emu3.config.schema import OptimizerConfig
from megatron_emu3.data.sample import check_sample, cu_seqlens_from_segments
from megatron_emu3.data.synthetic import SyntheticDataset
from megatron_emu3.training.schedule import lr_at


def test_warmup_then_cosine_to_min():
    opt = OptimizerConfig(lr=1.0, min_lr=0.1, warmup_iters=4, decay_style="cosine")
    assert [lr_at(s, opt, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, opt, 14) == pytest.approx(1.0)
    assert lr_at(9, opt, 14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(14, opt, 14) == pytest.approx(0.1)
    assert lr_at(100, opt, 14) == pytest.approx(0.1)


def test_linear_and_constant():
    lin = OptimizerConfig(lr=2.0, min_lr=0.0, warmup_iters=0, decay_style="linear")
    assert lr_at(5, lin, 10) == pytest.approx(1.0)
    const = OptimizerConfig(lr=2.0, warmup_iters=0, decay_style="constant")
    assert lr_at(7, const, 10) == 2.0


def test_synthetic_samples_follow_the_contract_and_are_deterministic():
    ds = SyntheticDataset(seq_len=48, vocab=32, seed=5)
    a, b = ds[3], SyntheticDataset(seq_len=48, vocab=32, seed=5)[3]
    check_sample(a, 48)
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["tokens"], ds[4]["tokens"])
    # the rule inside a document, positions restarting at each boundary, no loss across documents
    same_doc = a["segment_ids"][1:] == a["segment_ids"][:-1]
    assert np.all(a["tokens"][1:][same_doc] == (a["tokens"][:-1][same_doc] * 5 + 3) % 32)
    starts = cu_seqlens_from_segments(a["segment_ids"])[:-1]
    assert np.all(a["position_ids"][starts] == 0)
    boundary = np.flatnonzero(~same_doc)
    assert np.all(a["loss_weights"][boundary] == 0)
    assert np.all(a["labels"][:-1] == a["tokens"][1:])
