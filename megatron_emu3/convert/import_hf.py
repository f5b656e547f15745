"""Hugging Face Emu3 directory -> a model-only checkpoint that training can start from.

The output directory is a checkpoints directory (``iter_0000000/`` + ``latest``) in megatron-core's
layout-independent format: point `checkpoint.load_weights_from` at it from any TP/CP/DP layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

from megatron_emu3.config.loading import resolve_config
from megatron_emu3.config.validation import padded_vocab_size
from megatron_emu3.convert.export import CONDITIONAL_PREFIX, SINGLE_PROCESS
from megatron_emu3.convert.hf_config import check_emu3_directory, from_hf_text_config
from megatron_emu3.convert.hf_mapping import HF_TEXT_PREFIX, from_hf
from megatron_emu3.convert.safetensors_io import read_hf_state

logger = logging.getLogger(__name__)


def read_hf_text_config(hf_dir: str | Path):
    """(Emu3TextConfig, tensor-name prefix) of an Emu3 directory; a clear error for anything else."""
    from transformers import AutoConfig

    check_emu3_directory(hf_dir)
    config = AutoConfig.from_pretrained(str(hf_dir))
    return (config.text_config, CONDITIONAL_PREFIX) if config.model_type == "emu3" else (config, HF_TEXT_PREFIX)


def import_from_hf(hf_dir: str | Path, output: str | Path, recipe: str | None = None, overrides=(),
                   vocab_size: int | None = None):
    """Write the checkpoint; returns (cfg, our TP=1 model holding the weights, checkpoint path)."""
    from megatron_emu3.checkpoint.state import save_model_weights
    from megatron_emu3.model.build import build_model
    from megatron_emu3.model.full_state import load_full_state
    from megatron_emu3.parallel.env import DistEnv
    from megatron_emu3.parallel.setup import init_distributed

    text_config, prefix = read_hf_text_config(hf_dir)
    fields = from_hf_text_config(text_config)
    if vocab_size is not None and vocab_size != fields["vocab_size"]:
        raise ValueError(f"--vocab-size {vocab_size} does not match {hf_dir}'s vocab_size {fields['vocab_size']}")
    model_overrides = [f"model.{k}={v}" for k, v in fields.items()]
    cfg = resolve_config(recipe, [*overrides, *model_overrides])
    # the saved config keeps the requested layout; the conversion itself runs on one process
    work_cfg = resolve_config(recipe, [*overrides, *model_overrides, *SINGLE_PROCESS])
    init_distributed(work_cfg, DistEnv(0, 1, 0))
    gpt = build_model(work_cfg)
    padded = padded_vocab_size(fields["vocab_size"], work_cfg.model.make_vocab_size_divisible_by, 1)
    full = from_hf(read_hf_state(hf_dir, prefix), work_cfg.model, padded, prefix)
    load_full_state(gpt, {k: v.float() for k, v in full.items()}, 0, 1)
    path = save_model_weights(gpt, cfg, output)
    logger.info("imported %s -> %s (%d layers, vocab %d)", hf_dir, path, fields["num_layers"], fields["vocab_size"])
    return cfg, gpt, path
