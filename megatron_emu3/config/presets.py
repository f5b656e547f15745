"""Model presets, as data, in one place.

`emu3_8b` is the paper's architecture exactly (ARCHITECTURE.md section 1); `tiny` keeps every
architectural feature (GQA 2:1, SwiGLU, RMSNorm, RoPE 1e6, untied embeddings, the full Emu3 vocab)
at a size that trains on 2 CPU cores in seconds.
"""

from __future__ import annotations

from megatron_emu3.data.tokens import VOCAB_SIZE

MODEL_PRESETS: dict[str, dict] = {
    "emu3_8b": dict(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        num_query_groups=8,
        vocab_size=VOCAB_SIZE,
        rope_base=1_000_000,
        norm_eps=1e-5,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        init_std=0.02,
        untie_embeddings=True,
    ),
    "tiny": dict(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=176,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=VOCAB_SIZE,
        rope_base=1_000_000,
        norm_eps=1e-5,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_std=0.02,
        untie_embeddings=True,
    ),
}


def model_preset(name: str) -> dict:
    """The model fields of preset `name`; a clear error lists the known names."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(MODEL_PRESETS)}")
    return dict(MODEL_PRESETS[name])
