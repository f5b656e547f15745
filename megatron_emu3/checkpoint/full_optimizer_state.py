"""The optimizer's state in the full (TP=1, one-stage, unsharded) layout, keyed by parameter name.

For every model parameter: the fp32 main parameter (``param``; the model weight itself when the
model trains in fp32 without the distributed optimizer), Adam's ``exp_avg`` and ``exp_avg_sq``, and
its ``step``. The distributed optimizer's data-parallel shards are put back together, tensor-parallel
shards merged as `model/full_state.py` merges weights, and pipeline stages gathered, so the same
numbers compare across any layout: what a run holds against what its checkpoint gave back after a
resume or a reshard (tests/distributed/test_optimizer_state.py). Collective: every rank calls it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_emu3.model.full_state import full_names, merge_shards
from megatron_emu3.parallel.context import ParallelContext

STATE_KEYS = ("param", "exp_avg", "exp_avg_sq")


def _chained(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _step_of(inner, state: dict, main_param) -> float | None:
    """Adam's step for one parameter: per-parameter state (torch Adam) or the param group's (TE/apex)."""
    step = state.get("step")
    if step is None:
        for group in inner.param_groups:
            if any(p is main_param for p in group["params"]) and "step" in group:
                step = group["step"]
    return None if step is None else float(step)


def _plain_state(opt, param: torch.nn.Parameter) -> tuple[dict, float | None]:
    """One parameter's state from a non-distributed optimizer (fp32 copy in `main_param` under bf16)."""
    main = getattr(param, "main_param", None)
    if main is None:
        main = param
    state = opt.optimizer.state.get(main, {})
    tensors = {"param": main.detach()}
    for key in STATE_KEYS[1:]:
        tensors[key] = state[key].detach() if key in state else torch.zeros_like(main)
    return tensors, _step_of(opt.optimizer, state, main)


def _distributed_state(opt, named: dict) -> tuple[dict, dict]:
    """Full-length (this rank's TP shard) state of every parameter the distributed optimizer `opt`
    owns, its data-parallel shards summed into place over the optimizer's data-parallel group."""
    # every parameter of the optimizer's grad buffers (model_param_gbuf_map holds only this rank's)
    in_buffers = {p for buffer in opt.buffers for p in buffer.param_index_map}
    owned = [(name, p) for name, p in named.items() if p in in_buffers]
    sizes = [p.numel() for _, p in owned]
    device = owned[0][1].device if owned else torch.device("cpu")  # collectives run where the group does (NCCL: GPU)
    flat = torch.zeros(len(STATE_KEYS), sum(sizes), dtype=torch.float32, device=device)
    steps = torch.full((2, len(owned)), float("nan"), dtype=torch.float64, device=device)
    offset = 0
    for i, (name, p) in enumerate(owned):
        if p in opt.model_param_gbuf_map and p in opt.model_param_group_index_map:  # this rank owns a slice
            tensors = opt._get_main_param_and_optimizer_states(p)
            span = opt._get_model_param_range_map(p)["param"]
            for k, key in enumerate(STATE_KEYS):
                flat[k, offset + span.start: offset + span.end] = tensors[key].detach().float()
            group_index, group_order = opt.model_param_group_index_map[p]
            main = opt.optimizer.param_groups[group_index]["params"][group_order]
            step = _step_of(opt.optimizer, opt.optimizer.state.get(main, {}), main)
            if step is not None:
                steps[0, i], steps[1, i] = step, -step
        offset += sizes[i]
    group = opt.data_parallel_group
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        # slices are disjoint: a sum puts each rank's slice into place exactly
        dist.all_reduce(flat, group=group)
        known = torch.where(steps.isnan(), torch.full_like(steps, -float("inf")), steps)
        dist.all_reduce(known, op=dist.ReduceOp.MAX, group=group)
        steps = torch.where(known.isinf(), torch.full_like(steps, float("nan")), known)
    out, step_of = {}, {}
    offset = 0
    for i, (name, p) in enumerate(owned):
        out[name] = {key: flat[k, offset: offset + sizes[i]].view(p.shape) for k, key in enumerate(STATE_KEYS)}
        high, low = steps[0, i].item(), -steps[1, i].item()
        if high != low:
            raise RuntimeError(f"{name}: data-parallel ranks hold different Adam steps ({low:g} and {high:g})")
        step_of[name] = None if high != high else high
        offset += sizes[i]
    return out, step_of


def gather_full_optimizer_state(chunks, optimizer, ctx: ParallelContext) -> dict[str, dict]:
    """``{name: {"param", "exp_avg", "exp_avg_sq": full fp32 CPU tensor, "step": float or None}}`` on
    every rank; `chunks`: this rank's wrapped model chunks, `optimizer`: megatron-core's optimizer,
    `ctx`: this rank's groups (tensor-parallel shards and pipeline stages are gathered over them)."""
    named = {}
    for chunk in chunks if isinstance(chunks, (list, tuple)) else [chunks]:
        named.update(full_names(chunk))
    local: dict[str, dict] = {}
    for opt in _chained(optimizer):
        if hasattr(opt, "buffers") and hasattr(opt, "model_param_gbuf_map"):
            tensors, steps = _distributed_state(opt, named)
            for name in tensors:
                local[name] = {**tensors[name], "step": steps[name]}
        else:
            mine = {id(p) for group in opt.optimizer.param_groups for p in group["params"]}
            for name, p in named.items():
                if id(p) in mine or id(getattr(p, "main_param", None)) in mine:
                    tensors, step = _plain_state(opt, p)
                    local[name] = {**{k: t.float() for k, t in tensors.items()}, "step": step}
    missing = sorted(set(named) - set(local))
    if missing:
        raise RuntimeError(f"the optimizer holds no state for {len(missing)} parameters, first: {missing[0]}")

    tp_size = ctx.tp_size if dist.is_initialized() else 1
    out = {}
    for name in named:  # the same order on every rank of a TP group
        entry = {"step": local[name]["step"]}
        for key in STATE_KEYS:
            tensor = local[name][key].contiguous()
            shards = [tensor]
            if tp_size > 1:
                shards = [torch.empty_like(tensor) for _ in range(tp_size)]
                dist.all_gather(shards, tensor, group=ctx.tp_group)
            entry[key] = merge_shards(name, [shard.cpu() for shard in shards])
        out[name] = entry
    if dist.is_initialized() and ctx.pp_size > 1:
        stages = [None] * ctx.pp_size
        dist.all_gather_object(stages, out, group=ctx.pp_group)
        out = {name: entry for stage in stages for name, entry in stage.items()}
    return out
