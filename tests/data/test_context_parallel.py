"""Zigzag context-parallel split: reassembly gives the sample back; per-rank pieces keep their meaning."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_emu3.batch.context_parallel import (local_cu_seqlens, merge_from_cp, pad_documents_for_cp,
                                                 split_for_cp, zigzag_indices)
from megatron_emu3.data.loss_weights import LossWeightTable
from megatron_emu3.data.packing import assemble_sample
from megatron_emu3.data.sample import SAMPLE_KEYS, check_sample
from megatron_emu3.data.tokens import DocKind
from tests.data.shard_factory import random_doc


def packed_sample(seed: int, seq_len: int):
    rng = np.random.default_rng(seed)
    docs, kinds, used = [], [], 0
    while True:
        kind = int(rng.integers(0, len(DocKind)))
        doc = random_doc(rng, kind)
        if used + len(doc) > seq_len + 1:
            break
        docs.append(doc)
        kinds.append(kind)
        used += len(doc)
    return assemble_sample(docs, kinds, seq_len, LossWeightTable())


def test_zigzag_chunks():
    assert zigzag_indices(8, 2, 0).tolist() == [0, 1, 6, 7]
    assert zigzag_indices(8, 2, 1).tolist() == [2, 3, 4, 5]
    assert zigzag_indices(6, 1, 0).tolist() == list(range(6))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([1, 2, 4]), st.integers(1, 12))
def test_split_then_merge_is_the_identity(seed, cp, chunks):
    seq_len = 2 * cp * chunks * 4
    sample = packed_sample(seed, seq_len)
    parts = [split_for_cp(sample, cp, r) for r in range(cp)]
    for part in parts:
        assert all(v.shape == (seq_len // cp,) for v in part.values())
        assert all(part[k].dtype == sample[k].dtype for k in SAMPLE_KEYS)
    merged = merge_from_cp(parts, cp)
    for key in SAMPLE_KEYS:
        np.testing.assert_array_equal(merged[key], sample[key])
    # every (token, label, weight) triple lives on exactly one rank: weight sums add up
    assert sum(float(p["loss_weights"].sum()) for p in parts) == pytest.approx(float(sample["loss_weights"].sum()))


def test_batches_and_torch_tensors_split_on_the_last_axis():
    batch = {k: torch.from_numpy(np.stack([packed_sample(s, 32)[k] for s in range(3)])) for k in SAMPLE_KEYS}
    part = split_for_cp(batch, 2, 1)
    assert part["tokens"].shape == (3, 16)
    assert torch.equal(part["labels"], batch["labels"][:, 8:24])


def test_not_divisible_is_an_error():
    sample = packed_sample(0, 30)
    with pytest.raises(ValueError, match="30 is not divisible by 2 x context_parallel_size = 8"):
        split_for_cp(sample, 4, 0)


def test_local_cu_seqlens_breaks_at_the_chunk_seam():
    seg = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # rank 0 of cp=2 holds positions 0,1 and 6,7
    part = split_for_cp({"segment_ids": seg}, 2, 0)["segment_ids"]
    assert local_cu_seqlens(part).tolist() == [0, 2, 4]
    one_doc = split_for_cp({"segment_ids": np.zeros(8, int)}, 2, 0)["segment_ids"]
    assert local_cu_seqlens(one_doc).tolist() == [0, 2, 4]  # same document, not contiguous


def test_pad_documents_for_cp():
    sample = packed_sample(3, 40)
    padded = pad_documents_for_cp(sample, 2)
    check_sample(padded, len(padded["tokens"]))
    seg = padded["segment_ids"]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(seg)) + 1, [len(seg)]])
    assert np.all(np.diff(bounds) % 4 == 0)
    assert float(padded["loss_weights"].sum()) == float(sample["loss_weights"].sum())
