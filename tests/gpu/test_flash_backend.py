"""On a CUDA machine with flash-attn: the varlen backend equals SDPA with the document mask."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType


def _config() -> TransformerConfig:
    """One bf16 attention layer: 8 query heads in 2 groups of width 64."""
    return TransformerConfig(num_layers=1, hidden_size=512, num_attention_heads=8, num_query_groups=2,
                             attention_dropout=0.0, hidden_dropout=0.0, bf16=True, params_dtype=torch.bfloat16)


def _inputs(requires_grad: bool):
    """q [s, b, 8, 64], k and v [s, b, 2, 64] in bf16 on CUDA, and segment ids of three documents (300,
    500 and 224 tokens) in each of the 2 samples of 1,024 tokens."""
    s, b = 1024, 2
    q, k, v = (torch.randn(s, b, heads, 64, device="cuda", dtype=torch.bfloat16, requires_grad=requires_grad)
               for heads in (8, 2, 2))
    seg = torch.cat([torch.zeros(b, 300), torch.ones(b, 500), torch.full((b, 224), 2.0)], 1).int().cuda()
    return q, k, v, seg


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash_attn is not installed")
def test_real_flash_kernel_matches_sdpa():
    from megatron_emu3.batch.inputs import document_attention_mask
    from megatron_emu3.model.attention import SDPACoreAttention
    from megatron_emu3.model.flash_attention import FlashVarlenCoreAttention

    cfg = _config()
    flash = FlashVarlenCoreAttention(cfg, 1, AttnMaskType.causal, "self")
    sdpa = SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")
    q, k, v, seg = _inputs(requires_grad=False)
    torch.testing.assert_close(flash(q, k, v, seg).float(), sdpa(q, k, v, document_attention_mask(seg)).float(),
                               atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_torch_varlen_kernel_matches_sdpa_forward_and_backward():
    from megatron_emu3.batch.inputs import document_attention_mask
    from megatron_emu3.model.attention import SDPACoreAttention
    from megatron_emu3.model.flash_attention import TorchVarlenCoreAttention, torch_varlen_available

    ok, why = torch_varlen_available()
    if not ok:
        pytest.skip(why)
    cfg = _config()
    varlen = TorchVarlenCoreAttention(cfg, 1, AttnMaskType.causal, "self")
    sdpa = SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")
    q, k, v, seg = _inputs(requires_grad=True)
    got, expected = varlen(q, k, v, seg), sdpa(q, k, v, document_attention_mask(seg))
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
    grad = torch.randn_like(got)
    for g, e in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        torch.testing.assert_close(g.float(), e.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
def test_sdpa_with_a_document_mask_never_needs_the_math_kernel():
    """Packed documents through SDPA on CUDA run with the math kernel forbidden (it would keep fp32
    [b, heads, s, s] scores per layer), forward and backward, and equal the math kernel's result."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from megatron_emu3.batch.inputs import document_attention_mask
    from megatron_emu3.model.attention import SDPACoreAttention

    cfg = _config()
    sdpa = SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")
    q, k, v, seg = _inputs(requires_grad=True)
    mask = document_attention_mask(seg)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        got = sdpa(q, k, v, mask)
        grads = torch.autograd.grad(got, (q, k, v), torch.ones_like(got))
    with sdpa_kernel([SDPBackend.MATH]):
        expected = sdpa(q, k, v, mask)
        expected_grads = torch.autograd.grad(expected, (q, k, v), torch.ones_like(expected))
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g.float(), e.float(), atol=5e-2, rtol=5e-2)
