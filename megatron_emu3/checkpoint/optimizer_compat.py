"""Loading optimizer state across the distributed-optimizer on/off boundary (megatron-core 0.16).

megatron-core saves the plain optimizer (FP32Optimizer) and the distributed optimizer (fully
reshardable form) with the same per-parameter tensor keys (``optimizer.state.exp_avg.<param>``), but
their common parts differ and the distributed optimizer also wants fp32 master weights
(``optimizer.state.param.<param>``), which a plain fp32 checkpoint does not have (there the model
weights are the master weights). These functions bridge that, plus one gap of the torch-Adam path.
"""

from __future__ import annotations

import torch
from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject


def _is_distributed(optimizer) -> bool:
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return hasattr(chained[0], "buffers")


def init_empty_adam_state(optimizer) -> None:
    """Give a never-stepped torch Adam its state tensors (with ``step``) so it can be loaded into.

    megatron-core's DistributedOptimizer.state_dict() reads a ``step`` from every param state when
    Apex/TE are absent (torch's Adam), but its init_state_fn creates no ``step``: loading into a fresh
    optimizer would assert. The values are overwritten by the load.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(chained, "optimizer", None)
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if len(state) == 0:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param.data)
                    state["exp_avg_sq"] = torch.zeros_like(param.data)


def defer_missing_master_weights(sharded: dict, saved_keys: set) -> list[tuple]:
    """Take ``optimizer.state.param.*`` entries the checkpoint lacks out of the load request.

    A checkpoint written without the distributed optimizer in fp32 has no separate master weights
    (the model weights are the master weights), but the distributed optimizer asks for them under
    their own key. Returns the paths of the removed entries inside ``sharded["optimizer"]``.
    """
    prefix = "optimizer.state.param."
    deferred = []

    def walk(node, path):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for slot, value in list(items):
            key = getattr(value, "key", None)
            if isinstance(key, str) and key.startswith(prefix) and key not in saved_keys \
                    and key[len(prefix):] in saved_keys:
                deferred.append(path + (slot,))
                node[slot] = LocalNonpersistentObject(None)
            elif isinstance(value, (dict, list)):
                walk(value, path + (slot,))

    walk(sharded["optimizer"], ())
    return deferred


def fill_master_weights(optimizer, loaded_optimizer: dict, deferred: list[tuple]) -> None:
    """Fill the deferred master-weight slots with the (already loaded) model parameters.

    megatron-core's fully reshardable optimizer state lists parameters in the order of its grad
    buffers' ``param_index_map``; the slot's parent key is that index.
    """
    if not deferred:
        return
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    if len(chained) != 1 or not hasattr(chained[0], "buffers"):
        raise RuntimeError("cannot derive master weights: expected one distributed optimizer")
    params_in_order = [p for buffer in chained[0].buffers for p in buffer.param_index_map]
    for path in deferred:
        node = loaded_optimizer
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = params_in_order[path[-2]].detach().clone()


def adapt_optimizer_common(optimizer, loaded: dict) -> None:
    """Rewrite the non-tensor part of a loaded optimizer state for the other optimizer kind."""
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    if len(chained) != 1:
        return
    if _is_distributed(optimizer) and "optimizer" not in loaded and "param_groups" in loaded:
        step = loaded.get("state", {}).get("common_step")
        groups = [dict(g, step=int(step) if step is not None else 0) for g in loaded["param_groups"]]
        loaded["optimizer"] = {"param_groups": groups}
        loaded["param_state_sharding_type"] = "fully_reshardable"
    elif not _is_distributed(optimizer) and not hasattr(chained[0], "fp32_from_float16_groups") \
            and "optimizer" in loaded:
        # a distributed-optimizer checkpoint loaded by the plain fp32 optimizer (the bf16 one,
        # Float16OptimizerWithFloat16Params, keeps its state under "optimizer" itself)
        # the request's param_groups carry only this run's param ids; the group settings come from
        # this run too (lr and weight decay are set by the schedule every step anyway)
        steps = {g.get("step") for g in loaded["optimizer"]["param_groups"]} - {None}
        current = chained[0].optimizer.state_dict()["param_groups"]
        requested = loaded.get("param_groups") or current
        loaded["param_groups"] = [{**cur, "params": req["params"]} for cur, req in zip(current, requested)]
        loaded.setdefault("state", {})
        if steps:
            loaded["state"]["common_step"] = torch.tensor(float(steps.pop()))
        del loaded["optimizer"]
        loaded.pop("param_state_sharding_type", None)


def load_optimizer_state(optimizer, loaded: dict) -> None:
    """`optimizer.load_state_dict(loaded)`, working around megatron-core's two torch-Adam gaps.

    With torch's Adam (no Apex/TE: CPU, or a GPU without them) the distributed optimizer puts a
    ``step`` into every param state while loading, then copies each state entry from the checkpoint
    tensors, which never carry ``step`` (KeyError). During this call only, the step already set is
    passed through as its own source. Afterwards each parameter gets its own step tensor again
    (`untie_adam_steps`).
    """
    patched = []
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(chained, "optimizer", None)
        if not hasattr(chained, "buffers") or not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        original = chained._set_main_param_and_optimizer_states

        def with_step(model_param, tensors, _chained=chained, _original=original):
            group_index, group_order = _chained.model_param_group_index_map[model_param]
            main_param = _chained.optimizer.param_groups[group_index]["params"][group_order]
            state = _chained.optimizer.state[main_param]
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"]}
            return _original(model_param, tensors)

        chained._set_main_param_and_optimizer_states = with_step
        patched.append(chained)
    try:
        optimizer.load_state_dict(loaded)
    finally:
        for chained in patched:
            del chained._set_main_param_and_optimizer_states  # back to the class method
    for chained in patched:
        untie_adam_steps(chained.optimizer)


def untie_adam_steps(adam) -> None:
    """Give every parameter its own ``step`` tensor again.

    megatron-core's DistributedOptimizer.load_state_dict (0.16 through 0.19, torch Adam) puts *one*
    step tensor into every parameter's state, and torch's Adam increments each parameter's step in
    place: after a resume the shared step grew by the number of parameters per update, so the bias
    correction of every later step was wrong and the run drifted from the uninterrupted one.
    """
    shared: dict[int, torch.Tensor] = {}
    for state in adam.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            if id(step) in shared:
                state["step"] = step.clone()
            shared[id(step)] = step
