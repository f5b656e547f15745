"""Functions that run inside spawned ranks (importable by the spawn start method)."""

from __future__ import annotations

from pathlib import Path

import torch

RECIPE = str(Path(__file__).resolve().parents[2] / "examples" / "recipes" / "tiny.yaml")


def one_step(overrides: list[str], init_path: str | None, save_init_to: str | None = None) -> dict:
    """Build the tiny model (weights from `init_path` if given), run one optimizer step.

    Returns the loss, full (TP=1 layout) gradients and full parameters after the update.
    """
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.model.full_state import gather_full_state
    from megatron_emu3.training.data_feed import build_train_dataset
    from megatron_emu3.training.trainer import build_run, current_device, train_one_step
    from megatron_emu3.parallel.setup import destroy_distributed

    cfg = resolve_config(RECIPE, overrides)
    full = torch.load(init_path) if init_path else None
    run = build_run(cfg, full_state=full)
    if save_init_to:
        state = gather_full_state(run.model)
        if run.env.rank == 0:
            torch.save(state, save_init_to)
    run.model.train()
    result = train_one_step(run, build_train_dataset(cfg), current_device())
    grads = gather_full_state(run.model, grads=True) if not cfg.parallel.distributed_optimizer else None
    params = gather_full_state(run.model)
    destroy_distributed()
    return {"loss": result["loss"], "grads": grads, "params": params}
