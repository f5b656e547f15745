"""Incremental decoding: next-token logits from our megatron-core model (with or without a KV cache)
and from a transformers Emu3 model, behind one small interface.

A *language model session* answers two calls:
- ``start(ids, valid)``: run the left-padded prompts ``ids`` [n, s] (``valid`` [n, s] is False on
  pads) and return the logits of the last position [n, vocab];
- ``step(next_ids)``: append one token per row [n] and return the next logits [n, vocab].

`MegatronLM` runs our `GPTModel` (any tensor-parallel layout, logits gathered over TP ranks; no
sequence or context parallelism at inference). With ``use_cache=True`` it runs the model's own
modules layer by layer (embedding, norms, fused QKV, RoPE, output projection, MLP) keeping each
layer's rotated keys and values, so a step costs one token; ``use_cache=False`` re-runs the full
forward (`GPTModel.forward`) over the whole sequence every step: the reference the cache is tested
against. RoPE scores depend only on distances, and pads are masked as keys, so left padding does
not change a row's logits (up to float rounding). `HFLM` does the same with transformers' cache.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_emu3.model.build import unwrap
from megatron_emu3.parallel.context import ParallelContext


def _mask(valid_keys: torch.Tensor, q_len: int, offset: int) -> torch.Tensor:
    """Boolean SDPA mask [n, 1, q_len, k_len] (True = may attend): causal, pads never attended.

    A padded query row attends to itself so no softmax row is empty (its output is never used).
    """
    k_len = valid_keys.shape[1]
    q_pos = torch.arange(offset, offset + q_len, device=valid_keys.device)[:, None]
    k_pos = torch.arange(k_len, device=valid_keys.device)[None, :]
    causal = k_pos <= q_pos
    allowed = causal[None] & valid_keys[:, None, :]
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed[:, None]


class MegatronLM:
    """Decoding session over our GPTModel (DDP/Float16Module wrappers are unwrapped).

    `vocab_size` trims megatron-core's padded vocabulary rows; `max_length` bounds the cache. Under
    tensor parallelism `ctx` (this rank's parallel context) lets every TP rank take TP rank 0's tokens.
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int | None = None, max_length: int = 4096,
                 use_cache: bool = True, ctx: ParallelContext | None = None):
        self.gpt = unwrap(model)
        cfg = self.gpt.config
        self.ctx = ctx
        self.tp = cfg.tensor_model_parallel_size
        if self.tp > 1 and ctx is None:
            raise ValueError("a tensor-parallel model decodes with its parallel context: MegatronLM(..., ctx=run.ctx)")
        if cfg.sequence_parallel or cfg.context_parallel_size > 1:
            raise ValueError("generation runs without sequence or context parallelism; build or load the model "
                             "with parallel.sequence_parallel=false parallel.cp=1 (any parallel.tp works)")
        self.vocab_size = vocab_size or self.gpt.vocab_size
        self.max_length, self.use_cache = max_length, use_cache
        self.gpt.eval()

    # -- shared helpers -------------------------------------------------------------------------
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[s, n, h] final hidden states -> gathered logits [n, s, vocab] (fp32, padding rows trimmed)."""
        weight = self.gpt.shared_embedding_or_output_weight() if self.gpt.share_embeddings_and_output_weights else None
        logits, _ = self.gpt.output_layer(hidden, weight=weight)
        if self.tp > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
        return logits.transpose(0, 1)[..., : self.vocab_size].float()

    @torch.no_grad()
    def full_logits(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits [n, s, vocab] of the whole (left-padded) sequence through `GPTModel.forward`."""
        n, s = ids.shape
        positions = torch.arange(s, device=ids.device).expand(n, s)
        mask = ~_mask(valid, s, 0)  # megatron's convention: True = masked
        logits = self.gpt(ids, positions, mask)
        if self.tp > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
        return logits[..., : self.vocab_size].float()

    def agree(self, tokens_: torch.Tensor) -> torch.Tensor:
        """Make every tensor-parallel rank use TP rank 0's tokens (no-op without TP)."""
        if self.tp > 1:
            dist.broadcast(tokens_, src=dist.get_global_rank(self.ctx.tp_group, 0), group=self.ctx.tp_group)
        return tokens_

    # -- session --------------------------------------------------------------------------------
    @torch.no_grad()
    def start(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.max_length:
            raise ValueError(f"prompt of {ids.shape[1]} tokens exceeds the decoding length {self.max_length}")
        self.ids, self.valid = ids, valid
        if not self.use_cache:
            return self.full_logits(ids, valid)[:, -1]
        n = ids.shape[0]
        first = next(self.gpt.parameters())
        self.cache = []
        for layer in self.gpt.decoder.layers:
            attn = layer.self_attention
            shape = (self.max_length, n, attn.num_query_groups_per_partition, attn.hidden_size_per_attention_head)
            self.cache.append((first.new_zeros(shape), first.new_zeros(shape)))
        self.freqs = self.gpt.rotary_pos_emb(self.max_length)
        self.length = 0
        return self._forward_cached(ids)[:, -1]

    @torch.no_grad()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        next_ids = next_ids.reshape(-1, 1).to(self.ids.device)
        self.ids = torch.cat([self.ids, next_ids], dim=1)
        self.valid = torch.cat([self.valid, torch.ones_like(next_ids, dtype=torch.bool)], dim=1)
        if self.ids.shape[1] > self.max_length:
            raise ValueError(f"generation reached the decoding length {self.max_length}")
        if not self.use_cache:
            return self.full_logits(self.ids, self.valid)[:, -1]
        return self._forward_cached(next_ids)[:, -1]

    def _forward_cached(self, new_ids: torch.Tensor) -> torch.Tensor:
        """Run `new_ids` [n, q] at positions length..length+q against the cache; logits [n, q, vocab]."""
        gpt, q_len, start = self.gpt, new_ids.shape[1], self.length
        end = start + q_len
        positions = torch.arange(start, end, device=new_ids.device).expand_as(new_ids)
        hidden = gpt.embedding(input_ids=new_ids, position_ids=positions)  # [q, n, h]
        freqs = self.freqs[start:end]
        allowed = _mask(self.valid[:, :end], q_len, start)
        for layer, (k_cache, v_cache) in zip(gpt.decoder.layers, self.cache):
            attn = layer.self_attention
            query, key, value = attn.get_query_key_value_tensors(layer.input_layernorm(hidden), None)[:3]
            query = apply_rotary_pos_emb(query, freqs, config=gpt.config)
            key = apply_rotary_pos_emb(key, freqs, config=gpt.config)
            k_cache[start:end], v_cache[start:end] = key, value
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, k_cache[:end], v_cache[:end]))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True,
                                                 scale=getattr(attn.core_attention, "softmax_scale", None))
            context = out.permute(2, 0, 1, 3).reshape(q_len, new_ids.shape[0], -1)
            projected, bias = attn.linear_proj(context)
            hidden = hidden + (projected if bias is None else projected + bias)
            mlp_out, bias = layer.mlp(layer.pre_mlp_layernorm(hidden))
            hidden = hidden + (mlp_out if bias is None else mlp_out + bias)
        self.length = end
        return self._logits(gpt.decoder.final_layernorm(hidden))


class HFLM:
    """Decoding session over a transformers `Emu3ForCausalLM` / `Emu3ForConditionalGeneration`."""

    def __init__(self, model, vocab_size: int | None = None, use_cache: bool = True):
        self.model = model.eval()
        config = getattr(model.config, "text_config", model.config)
        self.vocab_size = vocab_size or config.vocab_size
        self.max_length = config.max_position_embeddings
        self.use_cache = use_cache

    @torch.no_grad()
    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        mask = self.valid.long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = dict(attention_mask=mask, use_cache=self.use_cache)
        if self.use_cache and self.past is not None:
            kwargs.update(past_key_values=self.past, position_ids=positions[:, -ids.shape[1]:])
        else:
            kwargs.update(position_ids=positions)
        out = self.model(input_ids=ids, **kwargs)
        self.past = out.past_key_values if self.use_cache else None
        return out.logits[:, -1, : self.vocab_size].float()

    def start(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        self.ids, self.valid, self.past = ids, valid, None
        return self._run(ids)

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        next_ids = next_ids.reshape(-1, 1).to(self.ids.device)
        self.ids = torch.cat([self.ids, next_ids], dim=1)
        self.valid = torch.cat([self.valid, torch.ones_like(next_ids, dtype=torch.bool)], dim=1)
        return self._run(next_ids if self.use_cache else self.ids)

    def agree(self, tokens_: torch.Tensor) -> torch.Tensor:
        return tokens_  # one process
