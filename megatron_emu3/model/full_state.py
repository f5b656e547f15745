"""Move between a rank's tensor-parallel shard and the full (TP=1) model state.

The full layout is megatron-core's TP=1 layout: QKV fused per query group ([q x heads/groups, k, v]
for each group) and SwiGLU fc1 as [gate; up]. Under TP each rank holds whole query groups of QKV,
its slice of gate followed by its slice of up in fc1 (naive row splitting of fc1 is wrong), row
slices of the embedding and output layer, column slices of the attention output and fc2, and full
copies of the norms. Used by tests ("same weights" under any layout) and the HF converters.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist

_ROW_SPLIT = re.compile(r"(word_embeddings|output_layer|linear_qkv)\.weight$")
_COL_SPLIT = re.compile(r"(linear_proj|linear_fc2)\.weight$")
_GATED = re.compile(r"linear_fc1\.weight$")


def _check_divisible(name: str, size: int, tp: int) -> None:
    if size % tp:
        raise ValueError(f"{name}: dimension {size} is not divisible by tensor-parallel size {tp}")


def split_dim(name: str) -> int | None:
    """The dimension tensor parallelism splits for parameter `name` (None: replicated)."""
    if _GATED.search(name) or _ROW_SPLIT.search(name):
        return 0
    if _COL_SPLIT.search(name):
        return 1
    return None


def shard_full_tensor(name: str, full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's shard of the full tensor `name`."""
    if tp_size == 1:
        return full
    if _GATED.search(name):
        gate, up = full.chunk(2, dim=0)
        _check_divisible(name, gate.shape[0], tp_size)
        return torch.cat([gate.chunk(tp_size, 0)[tp_rank], up.chunk(tp_size, 0)[tp_rank]], dim=0)
    if _ROW_SPLIT.search(name):
        _check_divisible(name, full.shape[0], tp_size)
        return full.chunk(tp_size, dim=0)[tp_rank]
    if _COL_SPLIT.search(name):
        _check_divisible(name, full.shape[1], tp_size)
        return full.chunk(tp_size, dim=1)[tp_rank]
    return full


def merge_shards(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor `name` from all TP ranks' shards (inverse of `shard_full_tensor`)."""
    if len(shards) == 1:
        return shards[0]
    if _GATED.search(name):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    if _ROW_SPLIT.search(name):
        return torch.cat(shards, dim=0)
    if _COL_SPLIT.search(name):
        return torch.cat(shards, dim=1)
    return shards[0]


# Transformer Engine's layer spec fuses each norm into the following linear; the full layout uses the
# local spec's names for them (the names the HF mapping and tests know).
_TE_NORM_NAMES = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
                  "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}


def canonical_name(name: str) -> str:
    """A parameter's name in the full layout, whatever wrappers and layer spec (local or TE) built it."""
    name = name.removeprefix("module.").removeprefix("module.")
    for te_name, local_name in _TE_NORM_NAMES.items():
        if name.endswith(te_name):
            return name[: -len(te_name)] + local_name
    return name


_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")


def full_names(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters of one model chunk by their full-layout name: a pipeline stage's local layer i is
    named by its global layer number."""
    gpt = model
    while hasattr(gpt, "module"):
        gpt = gpt.module
    layers = getattr(getattr(gpt, "decoder", None), "layers", [])
    offset = {str(i): str(layer.layer_number - 1) for i, layer in enumerate(layers)}
    out = {}
    for name, param in model.named_parameters():
        name = _LAYER.sub(lambda m: f"decoder.layers.{offset[m.group(1)]}.", canonical_name(name), count=1)
        out[name] = param
    return out


def _named_tensors(model: torch.nn.Module, use_grads: bool):
    for name, param in full_names(model).items():
        if use_grads:
            grad = getattr(param, "main_grad", None)
            if grad is None:
                grad = param.grad
            yield name, grad
        else:
            yield name, param.data


def gather_full_state(model, tp_group=None, grads: bool = False) -> dict[str, torch.Tensor]:
    """Full (TP=1, one-stage layout) fp32 CPU copies of the parameters (or their gradients) on every
    rank. `model`: a model or this rank's list of pipeline chunks; stages are gathered too."""
    from megatron.core import parallel_state

    tp_group = tp_group or parallel_state.get_tensor_model_parallel_group()
    tp_size = dist.get_world_size(tp_group) if dist.is_initialized() else 1
    out = {}
    for chunk in model if isinstance(model, (list, tuple)) else [model]:
        for name, tensor in _named_tensors(chunk, grads):
            tensor = tensor.detach().float().contiguous()
            if tp_size > 1:
                shards = [torch.empty_like(tensor) for _ in range(tp_size)]
                dist.all_gather(shards, tensor, group=tp_group)
            else:
                shards = [tensor]
            out[name] = merge_shards(name, [s.cpu() for s in shards])
    if dist.is_initialized() and parallel_state.get_pipeline_model_parallel_world_size() > 1:
        stages = [None] * parallel_state.get_pipeline_model_parallel_world_size()
        dist.all_gather_object(stages, out, group=parallel_state.get_pipeline_model_parallel_group())
        out = {name: tensor for stage in stages for name, tensor in stage.items()}
    return out


@torch.no_grad()
def load_full_state(model: torch.nn.Module, full: dict[str, torch.Tensor], tp_rank: int, tp_size: int) -> None:
    """Copy this rank's shards of `full` into `model` (one chunk: its own layers); names and shapes
    must match exactly."""
    stripped = full_names(model)
    missing = sorted(set(stripped) - set(full))
    if missing:
        raise KeyError(f"full state lacks {len(missing)} parameters, first: {missing[0]}")
    for name, param in stripped.items():
        shard = shard_full_tensor(name, full[name], tp_rank, tp_size)
        if shard.shape != param.shape:
            raise ValueError(f"{name}: model shard has shape {tuple(param.shape)}, full-state shard has "
                             f"{tuple(shard.shape)} (tp={tp_size}); the architectures differ")
        param.copy_(shard.to(param.dtype))
