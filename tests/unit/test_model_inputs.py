"""Model inputs per backend: the document mask and the THD packed-sequence parameters."""

from __future__ import annotations

import pytest
import torch

from megatron_emu3.batch.inputs import document_attention_mask
from megatron_emu3.batch.inputs import model_inputs, packed_seq_params


def test_document_mask_is_causal_and_document_local():
    seg = torch.tensor([[0, 0, 1, 1, 1, 2]])
    allowed = ~document_attention_mask(seg)[0, 0]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for q in range(6):
        for k in range(q + 1):
            expected[q, k] = bool(seg[0, q] == seg[0, k])
    assert torch.equal(allowed, expected)


def test_thd_flattens_samples_and_marks_every_document():
    seg = torch.tensor([[0, 0, 0, 1], [0, 1, 1, 1]])
    params = packed_seq_params(seg)
    assert params.qkv_format == "thd"
    assert params.cu_seqlens_q.tolist() == [0, 3, 4, 5, 8]
    assert params.max_seqlen_q == 3
    batch = {"tokens": torch.arange(8).view(2, 4), "position_ids": torch.tensor([[0, 1, 2, 0], [0, 0, 1, 2]]),
             "labels": torch.arange(8).view(2, 4), "segment_ids": seg}
    thd = model_inputs(batch, "thd")
    assert thd["input_ids"].shape == (1, 8) and thd["attention_mask"] is None
    local = model_inputs(batch, "mask")
    assert local["attention_mask"].shape == (2, 1, 4, 4)
    assert torch.equal(model_inputs(batch, "segments")["attention_mask"], seg)
    with pytest.raises(ValueError, match="unknown model input format"):
        model_inputs(batch, "bshd")
