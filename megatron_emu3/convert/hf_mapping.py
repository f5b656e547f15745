"""Tensor mapping between our full state (megatron-core TP=1 layout) and transformers' Emu3.

megatron-core fuses Q, K and V per query group: for each of the G groups, [q (heads/G x head_dim
rows), k (head_dim rows), v (head_dim rows)]; SwiGLU fc1 is [gate; up]. transformers keeps
q/k/v/o_proj and gate/up/down_proj separate. Embedding and output rows beyond the real vocabulary
(megatron-core's padding) are dropped on export and zero-filled on import. Pure torch, no I/O.
"""

from __future__ import annotations

import torch

from megatron_emu3.config.schema import ModelConfig

HF_TEXT_PREFIX = "model."  # Emu3ForCausalLM; Emu3ForConditionalGeneration uses "model.text_model."


def _dims(m: ModelConfig) -> tuple[int, int, int]:
    head_dim = m.hidden_size // m.num_attention_heads
    return head_dim, m.num_query_groups, m.num_attention_heads // m.num_query_groups


def split_qkv(qkv: torch.Tensor, m: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron-core fused QKV [G*(q+2)*d, h] -> (q [heads*d, h], k [G*d, h], v [G*d, h])."""
    d, groups, q_per_group = _dims(m)
    per_group = qkv.view(groups, (q_per_group + 2) * d, -1)
    q, k, v = per_group.split([q_per_group * d, d, d], dim=1)
    return q.reshape(-1, qkv.shape[-1]), k.reshape(-1, qkv.shape[-1]), v.reshape(-1, qkv.shape[-1])


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: ModelConfig) -> torch.Tensor:
    """Inverse of `split_qkv`."""
    d, groups, q_per_group = _dims(m)
    hidden = q.shape[-1]
    fused = torch.cat([q.view(groups, q_per_group * d, hidden), k.view(groups, d, hidden),
                       v.view(groups, d, hidden)], dim=1)
    return fused.reshape(-1, hidden)


def to_hf(full: dict[str, torch.Tensor], m: ModelConfig, prefix: str = HF_TEXT_PREFIX) -> dict[str, torch.Tensor]:
    """Our full state -> transformers' Emu3 text-model state dict (vocab padding trimmed)."""
    out = {
        f"{prefix}embed_tokens.weight": full["embedding.word_embeddings.weight"][: m.vocab_size],
        f"{prefix}norm.weight": full["decoder.final_layernorm.weight"],
        "lm_head.weight": full["output_layer.weight"][: m.vocab_size],
    }
    for i in range(m.num_layers):
        src, dst = f"decoder.layers.{i}.", f"{prefix}layers.{i}."
        q, k, v = split_qkv(full[src + "self_attention.linear_qkv.weight"], m)
        gate, up = full[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out.update({
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": full[src + "self_attention.linear_proj.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": full[src + "mlp.linear_fc2.weight"],
            dst + "input_layernorm.weight": full[src + "input_layernorm.weight"],
            dst + "post_attention_layernorm.weight": full[src + "pre_mlp_layernorm.weight"],
        })
    return {k: v.contiguous() for k, v in out.items()}


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] > rows:
        raise ValueError(f"tensor has {weight.shape[0]} rows, more than the padded vocabulary {rows}")
    pad = weight.new_zeros(rows - weight.shape[0], weight.shape[1])
    return torch.cat([weight, pad], dim=0)


def from_hf(hf: dict[str, torch.Tensor], m: ModelConfig, padded_vocab: int,
            prefix: str = HF_TEXT_PREFIX) -> dict[str, torch.Tensor]:
    """transformers' Emu3 text-model state dict -> our full state (vocab padded with zero rows)."""

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise KeyError(f"the Hugging Face weights have no tensor {name!r}; is this an Emu3 checkpoint?")
        return hf[name]

    embed = take(f"{prefix}embed_tokens.weight")
    if embed.shape[0] != m.vocab_size:
        raise ValueError(f"Hugging Face vocab is {embed.shape[0]} rows but the config says {m.vocab_size}")
    out = {
        "embedding.word_embeddings.weight": _pad_rows(embed, padded_vocab),
        "decoder.final_layernorm.weight": take(f"{prefix}norm.weight"),
        "output_layer.weight": _pad_rows(take("lm_head.weight"), padded_vocab),
    }
    for i in range(m.num_layers):
        src, dst = f"{prefix}layers.{i}.", f"decoder.layers.{i}."
        out.update({
            dst + "self_attention.linear_qkv.weight": fuse_qkv(take(src + "self_attn.q_proj.weight"),
                                                              take(src + "self_attn.k_proj.weight"),
                                                              take(src + "self_attn.v_proj.weight"), m),
            dst + "self_attention.linear_proj.weight": take(src + "self_attn.o_proj.weight"),
            dst + "mlp.linear_fc1.weight": torch.cat([take(src + "mlp.gate_proj.weight"),
                                                      take(src + "mlp.up_proj.weight")], dim=0),
            dst + "mlp.linear_fc2.weight": take(src + "mlp.down_proj.weight"),
            dst + "input_layernorm.weight": take(src + "input_layernorm.weight"),
            dst + "pre_mlp_layernorm.weight": take(src + "post_attention_layernorm.weight"),
        })
    return {k: v.contiguous() for k, v in out.items()}
