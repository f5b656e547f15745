"""Core attention on flash-attn's varlen kernel (GPU): documents as packed sequences, native GQA.

The micro-batch's b samples are laid end to end ([b*s, heads, d]); `cu_seqlens` marks every document
(built from the segment ids the model passes as `attention_mask`, see `model/inputs.py`), so the
kernel never attends across documents and K/V keep their own (fewer) heads. flash-attn is an optional
GPU extra, imported when the module is built; `flash_available()` says why it cannot be used.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_emu3.model.inputs import document_cu_seqlens


def flash_available() -> tuple[bool, str]:
    """(usable, reason): flash-attn needs CUDA and the flash_attn package (the `[gpu]` extra)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    if importlib.util.find_spec("flash_attn") is None:
        return False, "flash_attn is not installed (pip install 'megatron-emu3[gpu]')"
    return True, "flash_attn found"


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
            raise ValueError("the flash-attn backend has no context parallelism; use attention_backend=te or "
                             "sdpa (ring attention) with parallel.cp > 1")
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
