"""Build Emu3 as a megatron-core `GPTModel` shard for this rank.

`build_model` needs megatron-core's parallel state initialised (see `parallel/setup.py`). The decoder
spec is chosen once (`decoder_choice`) and handed back to the caller, whose data feed lays batches
out in the input format that spec's attention reads (`batch/inputs.py`).

Initial weights depend on the seed and each parameter's name only (`model/init.py`), and the
embedding and output layer have `padded_vocab_size` rows (a multiple that does not depend on the
tensor-parallel size up to 8, so a seed builds the same model under any layout). Rows past the real
vocabulary are never used: their logits are masked to -inf on the way out of the output layer, so
they take part neither in the loss nor in sampling, and the HF export (which trims them) holds
exactly the trained model.
"""

from __future__ import annotations

import logging

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from megatron_emu3.config.schema import Config
from megatron_emu3.config.to_mcore import transformer_config
from megatron_emu3.config.validation import padded_vocab_size
from megatron_emu3.model.init import initialize_parameters
from megatron_emu3.model.spec import DecoderChoice, decoder_spec

logger = logging.getLogger(__name__)


def decoder_choice(cfg: Config) -> DecoderChoice:
    """The decoder spec for the config's attention backend, and why (logged by `build_model`)."""
    return decoder_spec(cfg.parallel.attention_backend, cfg.model.num_layers, cfg.parallel.cp,
                        cfg.model.attention_dropout, qk_layernorm=cfg.model.qk_layernorm)


def build_model(cfg: Config, choice: DecoderChoice | None = None, vp_stage: int | None = None,
                config=None) -> GPTModel:
    """This rank's shard of the model (of virtual pipeline stage `vp_stage` under interleaving), on the
    current device, in the config's precision. `config`: a TransformerConfig to share between chunks."""
    choice = choice or decoder_choice(cfg)
    if vp_stage in (None, 0):
        logger.info("model: %s", choice.why)
    vocab = padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, cfg.parallel.tp)
    config = config or transformer_config(cfg)
    first = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    last = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    spec = choice.spec
    if isinstance(spec, TransformerBlockSubmodules):  # a whole-block spec: this stage's share of its layers
        spec = TransformerBlockSubmodules(layer_specs=spec.layer_specs[:1] * get_num_layers_to_build(config, vp_stage),
                                          layer_norm=spec.layer_norm)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=vocab,
        max_sequence_length=cfg.data.seq_length,
        pre_process=first,
        post_process=last,
        parallel_output=True,
        share_embeddings_and_output_weights=not cfg.model.untie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.model.rope_base,
        vp_stage=vp_stage,
    )
    initialize_parameters(model, cfg.seed, cfg.model.init_std, cfg.model.num_layers,
                          parallel_state.get_tensor_model_parallel_rank(),
                          parallel_state.get_tensor_model_parallel_world_size())
    if last:
        mask_padded_vocab(model.output_layer, cfg.model.vocab_size, vocab,
                          parallel_state.get_tensor_model_parallel_rank())
    return model


def build_model_chunks(cfg: Config, choice: DecoderChoice | None = None) -> list[GPTModel]:
    """This rank's model chunks: one, or `parallel.vpp` virtual pipeline stages, sharing one config."""
    config = transformer_config(cfg)
    choice = choice or decoder_choice(cfg)
    if choice.input_format == "thd" and cfg.parallel.pp > 1:
        # Transformer Engine's packed micro-batches differ in length (padding per document): pipeline
        # stages then exchange every activation's shape before the activation itself.
        config.variable_seq_lengths = True
    stages = [None] if cfg.parallel.vpp is None else list(range(cfg.parallel.vpp))
    return [build_model(cfg, choice, stage, config) for stage in stages]


def mask_padded_vocab(output_layer: torch.nn.Module, real_vocab: int, padded_vocab: int, tp_rank: int):
    """Make the output layer's logits of the padding rows -inf (this rank's columns, or all of them
    when the output is gathered); returns the hook handle."""

    def hook(module, args, output):
        logits, bias = output
        columns = logits.shape[-1]
        first = 0 if columns == padded_vocab else tp_rank * columns
        if first + columns <= real_vocab:
            return output
        column = torch.arange(first, first + columns, device=logits.device)
        return logits.masked_fill(column >= real_vocab, float("-inf")), bias

    return output_layer.register_forward_hook(hook)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model
