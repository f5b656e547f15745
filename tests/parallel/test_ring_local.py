"""Single-process checks of ring attention: zigzag layout, the block plan, CP=1 exactness, the module.

CP=1 (no process group) runs the same code path as a ring of one: two chunks, three blocks.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_emu3.batch.inputs import document_attention_mask

from megatron_emu3.model.attention import SDPACoreAttention
from megatron_emu3.batch.zigzag import zigzag_merge, zigzag_positions, zigzag_split
from megatron_emu3.model.ring_attention import RingCoreAttention, _plan, ring_attention
from tests.parallel.ring_scenarios import GQA, layouts, random_inputs, ring_errors


def test_zigzag_layout():
    # S=16, c=2: chunks of 4; rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2
    assert zigzag_positions(16, 0, 2).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert zigzag_positions(16, 1, 2).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    x = torch.arange(3 * 24).view(3, 24)
    for cp in (1, 2, 3, 4):
        parts = [zigzag_split(x, r, cp, dim=1) for r in range(cp)]
        for r, part in enumerate(parts):
            assert torch.equal(part, x[:, zigzag_positions(24, r, cp)])
        assert torch.equal(zigzag_merge(parts, dim=1), x)
    with pytest.raises(ValueError, match="divisible by 2"):
        zigzag_split(x, 0, 5, dim=1)


@pytest.mark.parametrize("cp", [2, 4])
def test_plan_covers_each_causal_block_once(cp):
    """Over all ranks and steps, every (query chunk, key chunk <= query chunk) pair once, no other."""
    seq_len = 16 * cp
    for layout, expect_skips in (("one_doc", False), ("singletons", True)):
        segments = layouts(seq_len, 8)[layout]
        chunks = list(segments.chunk(2 * cp, dim=1))
        seen = []
        for rank in range(cp):
            for step_blocks in _plan(chunks, SimpleNamespace(rank=rank, size=cp)):
                seen += [(b.q_chunk, b.kv_chunk) for b in step_blocks]
        assert len(seen) == len(set(seen))
        causal = {(q, k) for q in range(2 * cp) for k in range(q + 1)}
        # one document: all causal pairs; one token per document: only the diagonal is left
        assert set(seen) == (causal if not expect_skips else {(q, q) for q in range(2 * cp)})


@pytest.mark.parametrize("layout", ["one_doc", "many_docs", "spanning", "pads", "singletons", "mixed_batch"])
def test_single_rank_ring_equals_sdpa(layout):
    segments = layouts(32, 8)[layout]  # documents placed relative to 8-token steps; chunks are 16
    for heads, groups in GQA:
        q, k, v, grad_out = random_inputs(3, heads, groups, 32)
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            errors = ring_errors(q, k, v, segments, grad_out, None, 0, 1, dtype)
            assert max(errors.values()) <= tol, (layout, heads, groups, dtype, errors)


def test_segment_ids_must_not_decrease():
    q, k, v, _ = random_inputs(0, 2, 2, 8)
    with pytest.raises(ValueError, match="non-decreasing"):
        ring_attention(q, k, v, torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2]] * 2), None)


def _config(**kw) -> TransformerConfig:
    return TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                             attention_dropout=0.0, **kw)


def test_ring_core_attention_matches_sdpa_core_attention():
    """The megatron-core module interface at CP=1: [s, b, h, d] in, [s, b, h*d] out, ids as mask."""
    cfg = _config()
    ring = RingCoreAttention(cfg, 1, AttnMaskType.causal, "self", pg_collection=SimpleNamespace(cp=None))
    sdpa = SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")
    g = torch.Generator().manual_seed(0)
    query = torch.randn(32, 2, 4, 8, generator=g, requires_grad=True)
    key, value = (torch.randn(32, 2, 2, 8, generator=g, requires_grad=True) for _ in range(2))
    segments = layouts(32, 8)["many_docs"]
    got = ring(query, key, value, segments)
    want = sdpa(query, key, value, document_attention_mask(segments))
    assert got.shape == (32, 2, 32)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), (query, key, value))
    want_grads = torch.autograd.grad(want.square().sum(), (query, key, value))
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    causal = sdpa(query, key, value, None)  # None = one document on both
    torch.testing.assert_close(ring(query, key, value, None), causal, atol=1e-6, rtol=1e-5)


def test_ring_core_attention_refuses_what_it_cannot_do():
    query = torch.zeros(8, 1, 4, 8)
    key = torch.zeros(8, 1, 2, 8)
    no_cp = SimpleNamespace(cp=None)
    ring = RingCoreAttention(_config(), 1, AttnMaskType.causal, "self", pg_collection=no_cp)
    with pytest.raises(ValueError, match="local segment ids"):
        ring(query, key, key, document_attention_mask(torch.zeros(1, 8, dtype=torch.long)))
    dropout = RingCoreAttention(_config(), 1, AttnMaskType.causal, "self", attention_dropout=0.1,
                                pg_collection=no_cp)
    with pytest.raises(ValueError, match="attention dropout"):
        dropout(query, key, key, None)
    dropout.eval()  # no dropout at inference: fine
    assert dropout(query, key, key, None).shape == (8, 1, 32)
    with pytest.raises(ValueError, match="context_parallel_size=2"):
        RingCoreAttention(_config(context_parallel_size=2), 1, AttnMaskType.causal, "self", pg_collection=no_cp)
    with pytest.raises(ValueError, match="p2p"):
        RingCoreAttention(_config(), 1, AttnMaskType.causal, "self", cp_comm_type="a2a", pg_collection=no_cp)
