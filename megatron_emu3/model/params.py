"""Exact parameter counts of the architecture, from the config alone (pure arithmetic, no torch).

The dry run and the planner use these, so neither imports megatron-core.
"""

from __future__ import annotations

from megatron_emu3.config.schema import ModelConfig, head_dim


def count_parameters(model: ModelConfig, vocab_size: int | None = None) -> dict[str, int]:
    """Parameter counts by part for `vocab_size` embedding rows (default: the real vocab, unpadded)."""
    vocab = model.vocab_size if vocab_size is None else vocab_size
    h, f, d = model.hidden_size, model.ffn_hidden_size, head_dim(model)
    qkv = h * (model.num_attention_heads + 2 * model.num_query_groups) * d
    out_proj = model.num_attention_heads * d * h
    mlp = 3 * h * f
    qk_norms = 2 * d if model.qk_layernorm else 0
    per_layer = qkv + out_proj + mlp + 2 * h + qk_norms
    embeddings = vocab * h * (2 if model.untie_embeddings else 1)
    counts = {
        "embeddings": embeddings,
        "per_layer": per_layer,
        "layers": per_layer * model.num_layers,
        "final_norm": h,
    }
    counts["total"] = counts["embeddings"] + counts["layers"] + counts["final_norm"]
    return counts
