"""Our model config <-> transformers' Emu3TextConfig (and the Emu3Config with a VQ)."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_emu3.config.schema import ModelConfig
from megatron_emu3.data import tokens

EMU3_MODEL_TYPES = ("emu3", "emu3_text_model")  # Emu3ForConditionalGeneration, Emu3ForCausalLM


def check_emu3_directory(hf_dir: str | Path) -> str:
    """The model_type of a Hugging Face directory, read from its config.json without transformers (a
    wrong directory fails at once); a clear error when it is missing or not an Emu3 model."""
    config_file = Path(hf_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist: --hf must be a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from None
    model_type = config.get("model_type")
    if model_type not in EMU3_MODEL_TYPES:
        raise ValueError(f"{hf_dir} holds a {model_type!r} model ({config.get('architectures')}), not Emu3: only "
                         "Emu3 checkpoints (Emu3ForCausalLM / Emu3ForConditionalGeneration) can be read")
    return model_type


def check_hf_representable(m: ModelConfig) -> None:
    """Raise ValueError when transformers' Emu3 classes cannot hold model `m` exactly."""
    problems = []
    if m.qk_layernorm:
        problems.append("model.qk_layernorm=true (transformers' Emu3 attention has no per-head query/key RMSNorm: "
                        "the exported model would silently compute something else)")
    if m.head_dim is not None and m.head_dim * m.num_attention_heads != m.hidden_size:
        problems.append(f"model.head_dim={m.head_dim} with {m.num_attention_heads} heads (query width "
                        f"{m.head_dim * m.num_attention_heads}) != hidden_size {m.hidden_size} (the HF mapping "
                        "assumes head_dim = hidden_size / heads)")
    if problems:
        raise ValueError("this checkpoint cannot be exported to transformers' Emu3 classes: " + "; ".join(problems)
                         + ". Keep it in our checkpoint format (tools/generate.py and tools/sample.py load it "
                         "directly), or train without these options to export.")


def to_hf_text_config(m: ModelConfig, max_position_embeddings: int):
    """An `Emu3TextConfig` for `m` with the Emu3 pad/bos/eos ids (clamped for tiny test vocabularies)."""
    from transformers import Emu3TextConfig

    check_hf_representable(m)

    def special(token_id: int) -> int:
        # a vocabulary smaller than the Emu3 tokenizer (tests) cannot hold the real special ids
        return token_id if token_id < m.vocab_size else m.vocab_size - 1

    return Emu3TextConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=m.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rope_base)},
        attention_dropout=m.attention_dropout,
        initializer_range=m.init_std,
        tie_word_embeddings=not m.untie_embeddings,
        pad_token_id=special(tokens.PAD),
        bos_token_id=special(tokens.BOS),
        eos_token_id=special(tokens.EOS),
    )


def from_hf_text_config(hf) -> dict:
    """Model fields (our names) from an `Emu3TextConfig`; raises on what we cannot represent."""
    rope = getattr(hf, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not supported; only default RoPE")
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", 1_000_000))
    if float(theta) != int(theta):
        raise ValueError(f"rope_theta {theta} is not an integer; megatron-core takes an integer base")
    return dict(
        num_layers=hf.num_hidden_layers,
        hidden_size=hf.hidden_size,
        ffn_hidden_size=hf.intermediate_size,
        num_attention_heads=hf.num_attention_heads,
        num_query_groups=hf.num_key_value_heads or hf.num_attention_heads,
        vocab_size=hf.vocab_size,
        rope_base=int(theta),
        norm_eps=hf.rms_norm_eps,
        attention_dropout=float(hf.attention_dropout),
        init_std=hf.initializer_range,
        untie_embeddings=not hf.tie_word_embeddings,
    )
