"""Model presets, as data, in one place.

`emu3_8b` is the paper's architecture exactly (ARCHITECTURE.md section 1); `emu3p5_34b` is Emu3.5's
(sources beside it); `tiny` keeps every architectural feature of Emu3 (GQA 2:1, SwiGLU, RMSNorm, RoPE
1e6, untied embeddings, the full Emu3 vocab) at a size that trains on 2 CPU cores in seconds.
"""

from __future__ import annotations

# The Emu3 tokenizer's vocabulary: 151,643 Qwen BPE ids + 211 specials + 32,768 vision codes. The one
# home of token ids is data/tokens.py (tests/unit/test_config.py pins the two equal); config/ is the
# bottom layer and imports nothing from the rest of the package.
EMU3_VOCAB_SIZE = 184_622

MODEL_PRESETS: dict[str, dict] = {
    "emu3_8b": dict(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        num_query_groups=8,
        vocab_size=EMU3_VOCAB_SIZE,
        rope_base=1_000_000,
        norm_eps=1e-5,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        init_std=0.02,
        untie_embeddings=True,
    ),
    # Emu3.5 (BAAI, arXiv 2510.26583): 34.1B parameters = 31.2B transformer + 2.9B embeddings, context
    # 32,768, vocabulary 151,854 text + 131,072 vision codes = 282,926. Pinned from:
    # - github.com/baaivision/Emu3.5 src/emu3p5/modeling_emu3.py (the released modeling code): head_dim
    #   read from the config (not hidden / heads), q_norm / k_norm = RMSNorm(head_dim, eps=rms_norm_eps)
    #   applied per head before RoPE, SwiGLU MLP, no linear biases, untied lm_head;
    # - the released 34B config as quoted for its derivative Xiaomi-Robotics-U0 (vocab_size 282926,
    #   hidden 5120, intermediate 25600, 64 layers, 64 heads, 8 KV heads, head_dim 128); head_dim 128 is
    #   also the only width that gives the paper's 31.2B transformer parameters (80 would give 28.9B);
    # - RoPE base 1e6 and RMSNorm eps 1e-6 are Qwen3-32B's (same shape, which Emu3.5 is reported to
    #   build on). NOT confirmed against BAAI/Emu3.5's own config.json, which was not reachable here:
    #   check rope_theta / rms_norm_eps there before training from the released weights.
    "emu3p5_34b": dict(
        num_layers=64,
        hidden_size=5120,
        ffn_hidden_size=25600,
        num_attention_heads=64,
        num_query_groups=8,
        head_dim=128,
        qk_layernorm=True,
        vocab_size=151_854 + 131_072,
        rope_base=1_000_000,
        norm_eps=1e-6,
        hidden_dropout=0.0,  # not published for Emu3.5; 0 as is usual at this scale (Emu3-8B used 0.1)
        attention_dropout=0.0,
        init_std=0.02,
        untie_embeddings=True,
    ),
    "tiny": dict(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=176,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=EMU3_VOCAB_SIZE,
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
