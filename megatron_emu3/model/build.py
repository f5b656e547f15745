"""Build Emu3 as a megatron-core `GPTModel` shard for this rank, and count its parameters.

`build_model` needs megatron-core's parallel state initialised (see `parallel/setup.py`).
`count_parameters` is pure arithmetic over the config, so the dry run can report the exact
8B parameter count on any machine.
"""

from __future__ import annotations

import logging

import torch

from megatron.core.models.gpt import GPTModel

from megatron_emu3.config.schema import Config, ModelConfig
from megatron_emu3.config.to_mcore import head_dim, transformer_config
from megatron_emu3.config.validation import padded_vocab_size
from megatron_emu3.model.spec import decoder_spec

logger = logging.getLogger(__name__)


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


def build_model(cfg: Config) -> GPTModel:
    """This rank's shard of the model, on the current device, in the config's precision."""
    choice = decoder_spec(cfg.parallel.attention_backend, cfg.model.num_layers, cfg.parallel.cp,
                          cfg.model.attention_dropout, qk_layernorm=cfg.model.qk_layernorm)
    logger.info("model: %s", choice.why)
    vocab = padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, cfg.parallel.tp)
    model = GPTModel(
        config=transformer_config(cfg),
        transformer_layer_spec=choice.spec,
        vocab_size=vocab,
        max_sequence_length=cfg.data.seq_length,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=not cfg.model.untie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.model.rope_base,
    )
    model.vocab_size_real = cfg.model.vocab_size  # rows past it are megatron-core's padding
    model.input_format = choice.input_format  # how documents reach the attention (model/inputs.py)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model
