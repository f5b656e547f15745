"""Wrap a GPTModel shard for training: bf16 (Float16Module) and megatron-core's data-parallel DDP.

The wrapped model's TransformerConfig also carries what megatron-core's forward-backward schedules
read from it: the `no_sync` context of gradient accumulation. Gradients are finalised by the step
itself (`training/step.py::apply_update`), not by the schedule: our loss is already normalised by
the global loss-weight sum, and the schedule would divide again by its token count.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel
from megatron.core.transformer.module import Float16Module

from megatron_emu3.config.schema import Config
from megatron_emu3.config.to_mcore import ddp_config, uses_bf16


def wrap_model(cfg: Config, gpt: torch.nn.Module) -> DistributedDataParallel:
    """`gpt` on this rank's device, in the config's precision, inside DDP, ready for the schedules."""
    if torch.cuda.is_available():
        gpt = gpt.cuda(torch.cuda.current_device())
    config = gpt.config
    model = Float16Module(config, gpt) if uses_bf16(cfg) else gpt
    model = DistributedDataParallel(config, ddp_config(cfg), model)
    config.no_sync_func = model.no_sync
    config.finalize_model_grads_func = None
    return model


def frozen_copy(cfg: Config, gpt: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode, gradient-free model in the config's precision (DPO's reference)."""
    if torch.cuda.is_available():
        gpt = gpt.cuda(torch.cuda.current_device())
    for param in gpt.parameters():
        param.requires_grad_(False)
    model = Float16Module(gpt.config, gpt) if uses_bf16(cfg) else gpt
    return model.eval()


def sync_params(model) -> None:
    """Finish the parameter all-gathers that `parallel.overlap_param_gather` defers to the next
    forward, so every rank's parameters are current (before saving or reading them)."""
    if getattr(model, "ddp_config", None) is not None and model.ddp_config.overlap_param_gather:
        model.start_param_sync(force_sync=True)
