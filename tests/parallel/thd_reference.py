"""A reference for Transformer Engine's THD attention on CPU, context parallel included.

`ReferenceTHDAttention` has TE's `DotProductAttention` contract as megatron-core calls it with
packed sequences: query [t, h, d] and key/value [t, g, d] of this CP rank's tokens, `cu_seqlens_*`
the padded document boundaries of the whole row, each document split over CP ranks into chunks r and
2c-1-r. It gathers K/V from every CP rank (all-gather forward, all-reduce + slice backward, which
gloo supports), puts them back in row order and attends causally inside each document. It stands in
for TE's CUDA kernel so that everything around it runs on CPU: our THD micro-batches
(`batch/thd.py`), megatron-core's THD RoPE under CP, the loss over ranks. The real TE kernel runs in
tests/gpu when a GPU is lent.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule

from megatron_emu3.batch.thd import thd_partition_indices


class _GatherRows(torch.autograd.Function):
    """Concatenate every CP rank's rows; the gradient of a rank's rows is the sum over ranks."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.rows = group, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        return grad[rank * ctx.rows:(rank + 1) * ctx.rows], None


class ReferenceTHDAttention(MegatronModule):
    """Causal, document-local attention over THD inputs split per document over CP ranks."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        if (config.attention_dropout if attention_dropout is None else attention_dropout) > 0:
            raise ValueError("the reference THD attention has no dropout; set model.attention_dropout=0")
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        assert packed_seq_params is not None and packed_seq_params.qkv_format == "thd" and attention_mask is None
        cu = packed_seq_params.cu_seqlens_q_padded.to(torch.int64)
        total = int(cu[-1])
        group = parallel_state.get_context_parallel_group()
        cp_size, cp_rank = dist.get_world_size(group), dist.get_rank(group)
        mine = thd_partition_indices(cu, cp_size, cp_rank)
        if cp_size > 1:
            order = torch.cat([thd_partition_indices(cu, cp_size, r) for r in range(cp_size)])
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(total)
            key, value = (_GatherRows.apply(t, group)[inverse] for t in (key, value))
        document = torch.bucketize(torch.arange(total), cu[1:], right=True)
        allowed = (document[mine][:, None] == document[None, :]) & (torch.arange(total)[None, :] <= mine[:, None])
        q, k, v = (t.transpose(0, 1)[None] for t in (query, key, value))  # [1, heads, tokens, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.softmax_scale, enable_gqa=True)
        return out[0].transpose(0, 1).reshape(query.shape[0], -1)
