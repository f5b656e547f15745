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
from megatron_emu3.batch.inputs import document_attention_mask
from megatron_emu3.model.attention import SDPACoreAttention
from megatron_emu3.model.flash_attention import FlashVarlenCoreAttention, TorchVarlenCoreAttention


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


def test_cuda_form_of_sdpa_equals_the_gqa_mask_form():
    """What SDPACoreAttention does with a mask on CUDA (K/V repeated to the query's heads, the mask as
    one shared additive bias: the memory-efficient kernel's form) gives the same attention as the
    boolean mask with enable_gqa (the CPU form), forward and backward."""
    from megatron_emu3.model.attention import additive_mask, repeat_kv_heads

    torch.manual_seed(3)
    q = torch.randn(2, 4, 12, 16, requires_grad=True)
    k, v = torch.randn(2, 2, 12, 16, requires_grad=True), torch.randn(2, 2, 12, 16, requires_grad=True)
    mask = document_attention_mask(torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12]))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask, enable_gqa=True)
    bias = additive_mask(mask, q.dtype)
    assert additive_mask(mask, q.dtype) is bias and bias.dtype == q.dtype  # made once per mask
    assert torch.equal(bias == 0, ~mask)
    got = F.scaled_dot_product_attention(q, *repeat_kv_heads(q, k, v), attn_mask=bias)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    for g, e in zip(torch.autograd.grad(got.sum(), (q, k, v)), torch.autograd.grad(want.sum(), (q, k, v))):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)


def test_flash_wrapper_refuses_a_boolean_mask(monkeypatch):
    monkeypatch.setattr(FlashVarlenCoreAttention, "kernel_loader", staticmethod(lambda: reference_varlen))
    flash = FlashVarlenCoreAttention(_config(), 1, AttnMaskType.causal, "self")
    q = torch.randn(4, 1, 4, 16)
    with pytest.raises(ValueError, match="segment ids"):
        flash(q, q[:, :, :2], q[:, :, :2], torch.zeros(1, 1, 4, 4, dtype=torch.bool))


# torch's varlen_attn as released (keyword-only options after max_k): 2.11 has no enable_gqa, 2.13 has.
def varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), seqused_k=None, block_table=None, num_splits=None):
    assert key.shape[1] == query.shape[1], "the adapter must repeat K/V heads where enable_gqa is missing"
    assert tuple(window_size) == (-1, 0) and torch.equal(cu_seq_q, cu_seq_k)
    return reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, softmax_scale=scale, causal=True)


def varlen_attn_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    assert enable_gqa and key.shape[1] < query.shape[1], "K/V keep their own heads where enable_gqa exists"
    assert tuple(window_size) == (-1, 0) and torch.equal(cu_seq_q, cu_seq_k)
    return reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, softmax_scale=scale, causal=True)


STAND_INS = {"2.11": varlen_attn_2_11, "2.13": varlen_attn_2_13}


def _parameters(fn) -> list[tuple[str, object]]:
    import inspect

    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


def test_varlen_stand_in_has_the_installed_torch_signature():
    """The stand-in of the installed torch's line is its real signature (names, order, keyword-only)."""
    from torch.nn.attention.varlen import varlen_attn

    line = ".".join(torch.__version__.split(".")[:2])
    if line not in STAND_INS:
        pytest.fail(f"torch {torch.__version__}: add its varlen_attn signature to STAND_INS")
    assert _parameters(STAND_INS[line]) == _parameters(varlen_attn)


@pytest.mark.parametrize("torch_line", list(STAND_INS))
def test_torch_varlen_adapter_equals_sdpa_with_document_mask(monkeypatch, torch_line):
    """torch's varlen_attn (CUDA only) is replaced by stand-ins with the real 2.11 and 2.13 signatures
    that check what the adapter passes (causal window, GQA as each version takes it); the real kernel
    is compared in tests/gpu."""
    import torch.nn.attention.varlen as varlen

    monkeypatch.setattr(varlen, "varlen_attn", STAND_INS[torch_line])
    cfg = _config()
    module, sdpa = TorchVarlenCoreAttention(cfg, 1, AttnMaskType.causal, "self"), SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")
    torch.manual_seed(1)
    q, k, v = torch.randn(10, 2, 4, 16), torch.randn(10, 2, 2, 16), torch.randn(10, 2, 2, 16)
    seg = torch.tensor([[0] * 3 + [1] * 7, [0] * 9 + [1]])
    torch.testing.assert_close(module(q, k, v, seg), sdpa(q, k, v, document_attention_mask(seg)), atol=1e-6, rtol=1e-5)


def test_torch_varlen_refuses_attention_dropout_in_training():
    cfg = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                            attention_dropout=0.1, hidden_dropout=0.0)
    module = TorchVarlenCoreAttention(cfg, 1, AttnMaskType.causal, "self")
    q = torch.randn(4, 1, 4, 16)
    with pytest.raises(ValueError, match="no attention dropout"):
        module(q, q[:, :, :2], q[:, :, :2], torch.zeros(1, 4, dtype=torch.int64))


@pytest.mark.parametrize("te,flash,varlen,dropout,backend,cp,expected,fmt", [
    (False, False, False, 0.0, "auto", 1, "torch SDPA", "mask"),
    (False, False, False, 0.0, "auto", 2, "ring attention", "segments"),
    (False, True, True, 0.0, "auto", 1, "flash-attn varlen", "segments"),
    (False, True, False, 0.0, "auto", 2, "ring attention", "segments"),
    (False, True, False, 0.0, "sdpa", 1, "torch SDPA", "mask"),
    (False, False, True, 0.0, "auto", 1, "torch varlen", "segments"),
    (False, False, True, 0.1, "auto", 1, "no attention dropout", "mask"),
    (False, False, True, 0.1, "varlen", 1, "torch varlen", "segments"),
    (True, True, True, 0.0, "auto", 2, "Transformer Engine", "thd"),
])
def test_auto_picks_the_best_available_and_says_why(monkeypatch, te, flash, varlen, dropout, backend, cp, expected, fmt):
    monkeypatch.setattr(spec, "te_available", lambda: (te, "te: test"))
    monkeypatch.setattr(spec, "te_layer_spec", lambda qk_layernorm=False: "te spec")
    monkeypatch.setattr(spec, "flash_available", lambda: (flash, "flash: test"))
    monkeypatch.setattr(spec, "torch_varlen_available", lambda: (varlen, "varlen: test"))
    monkeypatch.setattr(FlashVarlenCoreAttention, "kernel_loader", staticmethod(lambda: reference_varlen))
    choice = spec.decoder_spec(backend, 2, cp, dropout)
    assert expected in choice.why and choice.input_format == fmt


@pytest.mark.parametrize("backend,cp,message", [("te", 1, "Transformer Engine cannot be used"),
                                                 ("flash", 1, "flash-attn cannot be used"),
                                                 ("varlen", 1, "torch's varlen attention cannot be used")])
def test_unavailable_backend_is_a_clear_error(monkeypatch, backend, cp, message):
    monkeypatch.setattr(spec, "te_available", lambda: (False, "no CUDA device"))
    monkeypatch.setattr(spec, "flash_available", lambda: (False, "no CUDA device"))
    monkeypatch.setattr(spec, "torch_varlen_available", lambda: (False, "no CUDA device"))
    with pytest.raises(RuntimeError, match=message):
        spec.decoder_spec(backend, 2, cp)
