"""Exact parameter counts of the architecture, from the config alone (pure arithmetic, no torch).

The dry run and the planner use these, so neither imports megatron-core.
"""

from __future__ import annotations

from megatron_emu3.config.schema import ModelConfig


def count_parameters(model: ModelConfig, vocab_size: int | None = None) -> dict[str, int]:
    """Parameter counts by part for `vocab_size` embedding rows (default: the real vocab, unpadded)."""
    vocab = model.vocab_size if vocab_size is None else vocab_size
    h, f = model.hidden_size, model.ffn_hidden_size
    head_dim = h // model.num_attention_heads
    qkv = h * (model.num_attention_heads + 2 * model.num_query_groups) * head_dim
    out_proj = model.num_attention_heads * head_dim * h
    mlp = 3 * h * f
    per_layer = qkv + out_proj + mlp + 2 * h
    embeddings = vocab * h * (2 if model.untie_embeddings else 1)
    counts = {
        "embeddings": embeddings,
        "per_layer": per_layer,
        "layers": per_layer * model.num_layers,
        "final_norm": h,
    }
    counts["total"] = counts["embeddings"] + counts["layers"] + counts["final_norm"]
    return counts
