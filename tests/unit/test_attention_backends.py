"""Attention backends behind one interface: which one `auto` picks and why, and the flash-attn varlen
wrapper's plumbing (flattening, cu_seqlens per document, GQA heads, output layout) checked against the
SDPA module with a reference varlen kernel standing in for flash-attn's CUDA kernel (the real kernel
is compared in tests/gpu when a GPU is lent)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType

from megatron_emu3.model import spec
from megatron_emu3.model.attention import SDPACoreAttention, document_attention_mask
from megatron_emu3.model.flash_attention import FlashVarlenCoreAttention


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=True):
    """flash_attn_varlen_func's contract on [tokens, heads, d], one causal attention per document."""
    out = torch.empty_like(q)
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=softmax_scale, enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out


def _config():
    return TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                             attention_dropout=0.0, hidden_dropout=0.0)


def test_flash_wrapper_equals_sdpa_with_document_mask(monkeypatch):
    monkeypatch.setattr(FlashVarlenCoreAttention, "kernel_loader", staticmethod(lambda: reference_varlen))
    cfg = _config()
    flash = FlashVarlenCoreAttention(cfg, 1, AttnMaskType.causal, "self")
    sdpa = SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")
    torch.manual_seed(0)
    s, b = 12, 2
    q = torch.randn(s, b, 4, 16, requires_grad=True)
    k = torch.randn(s, b, 2, 16, requires_grad=True)
    v = torch.randn(s, b, 2, 16, requires_grad=True)
    seg = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12])
    got = flash(q, k, v, seg)
    expected = sdpa(q, k, v, document_attention_mask(seg))
    assert got.shape == (s, b, 64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(got.sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)


def test_flash_wrapper_refuses_a_boolean_mask(monkeypatch):
    monkeypatch.setattr(FlashVarlenCoreAttention, "kernel_loader", staticmethod(lambda: reference_varlen))
    flash = FlashVarlenCoreAttention(_config(), 1, AttnMaskType.causal, "self")
    q = torch.randn(4, 1, 4, 16)
    with pytest.raises(ValueError, match="segment ids"):
        flash(q, q[:, :, :2], q[:, :, :2], torch.zeros(1, 1, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("te,flash,backend,cp,expected,fmt", [
    (False, False, "auto", 1, "torch SDPA", "mask"),
    (False, False, "auto", 2, "ring attention", "segments"),
    (False, True, "auto", 1, "flash-attn varlen", "segments"),
    (False, True, "auto", 2, "ring attention", "segments"),
    (False, True, "sdpa", 1, "torch SDPA", "mask"),
])
def test_auto_picks_the_best_available_and_says_why(monkeypatch, te, flash, backend, cp, expected, fmt):
    monkeypatch.setattr(spec, "te_available", lambda: (te, "te: test"))
    monkeypatch.setattr(spec, "flash_available", lambda: (flash, "flash: test"))
    monkeypatch.setattr(FlashVarlenCoreAttention, "kernel_loader", staticmethod(lambda: reference_varlen))
    choice = spec.decoder_spec(backend, 2, cp)
    assert expected in choice.why and choice.input_format == fmt


@pytest.mark.parametrize("backend,cp,message", [("te", 1, "Transformer Engine cannot be used"),
                                                 ("flash", 1, "flash-attn cannot be used")])
def test_unavailable_backend_is_a_clear_error(monkeypatch, backend, cp, message):
    monkeypatch.setattr(spec, "te_available", lambda: (False, "no CUDA device"))
    monkeypatch.setattr(spec, "flash_available", lambda: (False, "no CUDA device"))
    with pytest.raises(RuntimeError, match=message):
        spec.decoder_spec(backend, 2, cp)
