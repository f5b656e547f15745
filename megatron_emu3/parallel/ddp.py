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


def wrap_model(cfg: Config, gpt: torch.nn.Module, bucketing: bool = True) -> DistributedDataParallel:
    """`gpt` on this rank's device, in the config's precision, inside DDP."""
    if torch.cuda.is_available():
        gpt = gpt.cuda(torch.cuda.current_device())
    model = Float16Module(gpt.config, gpt) if uses_bf16(cfg) else gpt
    return DistributedDataParallel(gpt.config, ddp_config(cfg), model, disable_bucketing=not bucketing)


def wrap_chunks(cfg: Config, chunks: list[torch.nn.Module]) -> list[DistributedDataParallel]:
    """Wrap every model chunk (only the first buckets its gradients, as Megatron-LM does under
    interleaving) and tell the schedules how to accumulate: `no_sync` while micro-batches run, and
    under pipeline parallelism `start_grad_sync` when a chunk's last backward is done."""
    wrapped = [wrap_model(cfg, chunk, bucketing=(i == 0)) for i, chunk in enumerate(chunks)]
    config = chunks[0].config
    no_sync = [m.no_sync for m in wrapped]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    if cfg.parallel.pp > 1 and cfg.parallel.overlap_grad_reduce:
        grad_sync = [m.start_grad_sync for m in wrapped]
        config.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
    config.finalize_model_grads_func = None
    return wrapped


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
    forward, so every rank's parameters are current (before saving or reading them). `model`: a
    wrapped model or a list of chunks."""
    for chunk in model if isinstance(model, (list, tuple)) else [model]:
        if getattr(chunk, "ddp_config", None) is not None and chunk.ddp_config.overlap_param_gather:
            chunk.start_param_sync(force_sync=True)
