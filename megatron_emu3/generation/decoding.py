"""Incremental decoding: next-token logits from our megatron-core model (with or without a KV cache)
and from a transformers Emu3 model, behind one small interface.

A *language model session* answers two calls:
- ``start(ids, valid)``: run the left-padded prompts ``ids`` [n, s] (``valid`` [n, s] is False on
  pads) and return the logits of the last position [n, vocab];
- ``step(next_ids)``: append one token per row [n] and return the next logits [n, vocab];
- ``agree(tokens)``: the tokens every rank of a model-parallel group continues with (rank 0's).

`MegatronLM` runs our `GPTModel` (any tensor-parallel layout, logits gathered over TP ranks; no
sequence or context parallelism at inference). With ``use_cache=True`` it decodes through
megatron-core's own inference path: `GPTModel.forward` with a `StaticInferenceContext`, whose
attention layers keep every layer's keys and values, so a step costs one token and the model that
generates is exactly the model that trained (no second forward written here). ``use_cache=False``
re-runs the full forward over the whole sequence every step: the reference the cache is tested
against. RoPE scores depend only on distances, and pads are masked as keys, so left padding does
not change a row's logits (up to float rounding). `HFLM` does the same with transformers' cache.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.inference.contexts import StaticInferenceContext

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

    `vocab_size` (the config's model.vocab_size) trims the padded vocabulary rows; `max_length` bounds the cache. Under
    tensor parallelism `ctx` (this rank's parallel context) lets every TP rank take TP rank 0's tokens.
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int, max_length: int = 4096,
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
        self.vocab_size = vocab_size  # the real vocabulary: the padding rows' logits are -inf
        self.max_length, self.use_cache = max_length, use_cache
        self.gpt.eval()

    @torch.no_grad()
    def full_logits(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits [n, s, vocab] of the whole (left-padded) sequence through `GPTModel.forward`."""
        n, s = ids.shape
        positions = torch.arange(s, device=ids.device).expand(n, s)
        mask = ~_mask(valid, s, 0)  # megatron's convention: True = masked
        logits = self.gpt(ids, positions, mask, runtime_gather_output=True)
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
        self.inference = StaticInferenceContext(ids.shape[0], self.max_length)
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
        """Run `new_ids` [n, q] after the cached tokens; logits of the last new position [n, 1, vocab]."""
        q_len, start = new_ids.shape[1], self.inference.sequence_len_offset
        positions = torch.arange(start, start + q_len, device=new_ids.device).expand_as(new_ids)
        mask = ~_mask(self.valid[:, :start + q_len], q_len, start)
        logits = self.gpt(new_ids, positions, mask, inference_context=self.inference, runtime_gather_output=True)
        self.inference.increment_sequence_len_offset(q_len)
        return logits[..., : self.vocab_size].float()


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
