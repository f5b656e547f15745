"""Core attention on torch's scaled_dot_product_attention (CPU and any GPU).

Drop-in for megatron-core's ``DotProductAttention`` in a layer spec: same constructor, same tensor
layout ([s, b, heads, head_dim] in, [s, b, heads * head_dim] out). Differences that matter:
- GQA without repeating K/V (`enable_gqa=True`) where no mask is given (one document: the flash
  kernel) and on the CPU;
- the mask is built on the tensors' own device (megatron-core's local module builds it on CUDA);
- document boundaries: the model passes a boolean mask [b, 1, sq, sk] (True = masked, megatron's
  convention) built from the sample's segment ids (`document_attention_mask`); None means causal.

On CUDA a mask rules the flash kernel out, and GQA (``enable_gqa``) rules out the memory-efficient
one, which leaves the math kernel: [b, heads, s, s] scores in fp32 per layer (~3.2 GiB at 5,120 for
Emu3-8B; out of memory at 16k). So with a mask on CUDA, K and V are repeated to the query's heads
and the mask goes in as an additive bias in the activations' dtype, converted once per mask (every
layer of a forward gets the same mask tensor, and so shares one bias): the memory-efficient kernel
takes that, and keeps no s x s matrix but the bias. The planner counts both (parallel/planner.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


def repeat_kv_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V with their heads in dim 1 ([b, groups, s, d], or [tokens, groups, d] for the varlen
    kernels) repeated to the query's heads (query head i reads group i // (heads / groups), as GQA
    does)."""
    group = q.shape[1] // k.shape[1]
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The boolean mask (True = masked) as an additive bias in `dtype` (0 or -inf), made once per mask
    tensor and kept on it: the layers of one forward share it (their backward keeps one copy, not one
    each), and it goes when the mask goes."""
    made = mask.__dict__.setdefault("_additive_bias", {})
    if dtype not in made:
        made[dtype] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return made[dtype]


class SDPACoreAttention(MegatronModule):
    """Document-masked causal attention through `torch.nn.functional.scaled_dot_product_attention`."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError(
                "SDPACoreAttention runs without context parallelism; use parallel.cp=1 or an "
                "attention backend with context-parallel support"
            )
        tp_size = config.tensor_model_parallel_size
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.groups_per_partition = divide(config.num_query_groups, tp_size)
        self.softmax_scale = softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.attn_mask_type = attn_mask_type

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("SDPACoreAttention takes a boolean attention_mask, not a bias or packed params")
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout_p = self.dropout_p if self.training else 0.0
        kwargs = dict(dropout_p=dropout_p, scale=self.softmax_scale, enable_gqa=True)
        if attention_mask is None:
            kwargs["is_causal"] = True
        elif q.is_cuda:
            k, v, kwargs["attn_mask"] = *repeat_kv_heads(q, k, v), additive_mask(attention_mask, q.dtype)
            kwargs["enable_gqa"] = False
        else:
            kwargs["attn_mask"] = ~attention_mask
        if dropout_p > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        # [b, h, s, d] -> [s, b, h * d]
        b, h, s, d = out.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, h * d)
