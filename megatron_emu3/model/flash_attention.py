"""Core attention on a varlen flash kernel (GPU): documents as packed sequences, native GQA.

The micro-batch's b samples are laid end to end ([b*s, heads, d]); `cu_seqlens` marks every document
(built from the segment ids the model passes as `attention_mask`, see `batch/inputs.py`), so the
kernel never attends across documents and K/V keep their own (fewer) heads. Two kernels:
- `FlashVarlenCoreAttention`: flash-attn's ``flash_attn_varlen_func`` (the optional `[gpu]` extra,
  imported when the module is built; `flash_available()` says why it cannot be used);
- `TorchVarlenCoreAttention`: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (flash
  attention shipped inside torch, CUDA only, no extra package; `torch_varlen_available()`). It has no
  dropout, so it trains only with ``model.attention_dropout=0``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from typing import Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_emu3.batch.inputs import document_cu_seqlens
from megatron_emu3.model.attention import repeat_kv_heads


def flash_available() -> tuple[bool, str]:
    """(usable, reason): flash-attn needs CUDA and the flash_attn package (the `[gpu]` extra)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    if importlib.util.find_spec("flash_attn") is None:
        return False, "flash_attn is not installed (pip install 'megatron-emu3[gpu]')"
    return True, "flash_attn found"


def torch_varlen_available() -> tuple[bool, str]:
    """(usable, reason): torch's built-in varlen attention needs CUDA and torch.nn.attention.varlen."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return False, f"torch {torch.__version__} has no torch.nn.attention.varlen (PyTorch >= 2.10 has it)"
    return True, "torch.nn.attention.varlen found"


@functools.lru_cache(maxsize=4)
def _takes_enable_gqa(varlen_attn) -> bool:
    """Whether this torch's varlen_attn has the ``enable_gqa`` keyword (torch 2.13 has it, 2.11 not)."""
    return "enable_gqa" in inspect.signature(varlen_attn).parameters


def torch_varlen_kernel(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=True):
    """flash_attn_varlen_func's contract on torch's varlen_attn (causal = window (-1, 0)).

    Grouped-query K/V go in with their own heads where varlen_attn takes ``enable_gqa``; a torch
    whose varlen_attn does not (2.11) gets K/V repeated to the query's heads (correct on every
    version; costs K/V memory of the full head count in that attention call only).
    """
    if dropout_p > 0:
        raise ValueError(f"torch's varlen_attn has no dropout (asked for {dropout_p})")
    from torch.nn.attention.varlen import varlen_attn

    options = {"scale": softmax_scale, "window_size": (-1, 0) if causal else (-1, -1)}
    if k.shape[1] != q.shape[1]:
        if _takes_enable_gqa(varlen_attn):
            options["enable_gqa"] = True
        else:
            k, v = repeat_kv_heads(q, k, v)  # heads are dim 1 of [tokens, heads, d] too
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **options)


def _load_kernel():
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


class FlashVarlenCoreAttention(MegatronModule):
    """Document-masked causal attention through `flash_attn_varlen_func`."""

    kernel_loader = staticmethod(_load_kernel)  # tests swap in a reference kernel on CPU

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None, pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("the varlen backends (flash, varlen) have no context parallelism; use "
                             "attention_backend=te or sdpa (ring attention) with parallel.cp > 1")
        self.kernel = self.kernel_loader()
        self.softmax_scale = softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                attn_mask_type=None, attention_bias=None, packed_seq_params=None) -> torch.Tensor:
        """query [s, b, h, d], key/value [s, b, g, d], attention_mask = segment ids [b, s] -> [s, b, h*d]."""
        if attention_mask is None or attention_mask.dtype == torch.bool:
            raise ValueError("FlashVarlenCoreAttention takes the segment ids [b, s] as attention_mask")
        s, b = query.shape[:2]
        q, k, v = (t.transpose(0, 1).reshape(b * s, t.shape[2], t.shape[3]).contiguous() for t in (query, key, value))
        cu, max_len = document_cu_seqlens(attention_mask)
        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = self.kernel(q, k, v, cu, cu, max_len, max_len, dropout_p=dropout_p,
                                  softmax_scale=self.softmax_scale, causal=True)
        else:
            out = self.kernel(q, k, v, cu, cu, max_len, max_len, dropout_p=dropout_p,
                              softmax_scale=self.softmax_scale, causal=True)
        return out.reshape(b, s, -1).transpose(0, 1).contiguous()


class TorchVarlenCoreAttention(FlashVarlenCoreAttention):
    """Document-masked causal attention through torch's built-in `varlen_attn` (no flash-attn package)."""

    kernel_loader = staticmethod(lambda: torch_varlen_kernel)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None):
        if self.training and self.dropout_p > 0:
            raise ValueError(f"attention_backend=varlen (torch's varlen_attn) has no attention dropout but "
                             f"model.attention_dropout={self.dropout_p}; set it to 0 or use attention_backend=te|flash|sdpa")
        return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params)
