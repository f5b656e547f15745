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
    from megatron_emu3.parallel.ddp import sync_params
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.pretrain import PretrainTask
    from megatron_emu3.training.trainer import build_run, train_one_step

    cfg = resolve_config(RECIPE, overrides)
    full = torch.load(init_path) if init_path else None
    run = build_run(cfg, full_state=full)
    if save_init_to:
        state = gather_full_state(run.chunks)
        if run.ctx.rank == 0:
            torch.save(state, save_init_to)
    for chunk in run.chunks:
        chunk.train()
    result = train_one_step(run, PretrainTask(cfg, run.ctx, run.choice.input_format))
    sync_params(run.chunks)
    grads = gather_full_state(run.chunks, grads=True) if not cfg.parallel.distributed_optimizer else None
    params = gather_full_state(run.chunks)
    destroy_distributed()
    from megatron.core import jit

    fuser = "compile" if jit.jit_fuser is torch.compile else "none"  # see megatron_emu3/mcore_jit.py
    return {"loss": result["loss"], "grads": grads, "params": params, "jit_fuser": fuser}


def _full_logits(run, seq_len: int) -> torch.Tensor:
    """Logits (all vocab columns) of the model in eval mode on a fixed synthetic batch."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_emu3.data.sample import collate
    from megatron_emu3.data.synthetic import SyntheticDataset
    from megatron_emu3.batch.inputs import document_attention_mask

    batch = collate([SyntheticDataset(seq_len, 64, seed=99)[i] for i in range(2)])
    run.model.eval()
    with torch.no_grad():
        logits = run.model(batch["tokens"], batch["position_ids"], document_attention_mask(batch["segment_ids"]))
    return gather_from_tensor_model_parallel_region(logits).float()


def train_save(overrides: list[str], run_dir: str) -> dict:
    """Train (cfg's train.iters) with saving; return full params and logits afterwards."""
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.model.full_state import gather_full_state
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.trainer import train

    cfg = resolve_config(RECIPE, overrides + [f"run_dir={run_dir}"])
    run = train(cfg)
    # logits of the whole sequence need every CP rank's part and every pipeline stage: compare those
    # runs by parameters only
    single = cfg.parallel.cp == 1 and cfg.parallel.pp == 1
    logits = _full_logits(run, cfg.data.seq_length) if single else None
    out = {"params": gather_full_state(run.chunks), "logits": logits}
    destroy_distributed()
    return out


def load_only(overrides: list[str], checkpoint: str, weights_only: bool) -> dict:
    """Build under `overrides`, load `checkpoint`; return full params, logits and the train state."""
    from megatron_emu3.checkpoint.state import load_checkpoint, load_model_weights
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.model.build import unwrap
    from megatron_emu3.model.full_state import gather_full_state
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.trainer import build_run

    cfg = resolve_config(RECIPE, overrides)
    run = build_run(cfg)
    try:
        if weights_only:
            load_model_weights([unwrap(c) for c in run.chunks], checkpoint, cfg.model.vocab_size)
        else:
            load_checkpoint(run.checkpoint_parts(), checkpoint)
        single = cfg.parallel.cp == 1 and cfg.parallel.pp == 1
        out = {"params": gather_full_state(run.chunks),
               "logits": _full_logits(run, cfg.data.seq_length) if single else None,
               "step": run.state.step, "consumed": run.state.consumed_samples}
    finally:
        destroy_distributed()
    return out


def logits_from_full_state(overrides: list[str], full_path: str, token_path: str) -> dict:
    """Build our model under `overrides` from a full state file; return its logits on the tokens (real
    vocabulary), the largest logit of the padding columns, and the per-token loss the model itself
    computes for next-token labels (the training path: padded columns masked)."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.trainer import build_run

    cfg = resolve_config(RECIPE, overrides)
    run = build_run(cfg, full_state=torch.load(full_path))
    tokens = torch.load(token_path)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    run.model.eval()
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(run.model(tokens, positions, None)).float()
        ce = run.model(tokens[:, :-1], positions[:, :-1], None, labels=tokens[:, 1:]).float()
    destroy_distributed()
    return {"logits": logits[..., : cfg.model.vocab_size], "padding_max": logits[..., cfg.model.vocab_size:].max(),
            "ce": ce}


def one_step_te_reference(overrides: list[str], init_path: str | None) -> dict:
    """`one_step` on the Transformer Engine path (THD batches, TE checkpoint names), with the reference
    THD attention (tests/parallel/thd_reference.py) standing in for TE's CUDA kernel on CPU."""
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.model import spec
    from tests.parallel.thd_reference import ReferenceTHDAttention

    layers = resolve_config(RECIPE, overrides).model.num_layers
    saved = spec.te_available, spec.te_layer_spec
    spec.te_available = lambda: (True, "reference THD attention standing in for Transformer Engine")
    spec.te_layer_spec = lambda qk_layernorm=False: spec.local_block_spec(layers, ReferenceTHDAttention, qk_layernorm)
    try:
        return one_step(overrides + ["parallel.attention_backend=te"], init_path)
    finally:  # the rank processes are reused by later scenarios
        spec.te_available, spec.te_layer_spec = saved


def sharded_state_keys(overrides: list[str]) -> list[str]:
    """The checkpoint keys of the tiny model's layer 0 (what dist_checkpointing writes)."""
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.model.build import unwrap
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.trainer import build_run

    run = build_run(resolve_config(RECIPE, overrides))
    keys = sorted(v.key for v in unwrap(run.model).sharded_state_dict().values() if ".layers." in getattr(v, "key", ""))
    destroy_distributed()
    return keys


def assert_same_state(want: dict, got: dict, what: str) -> None:
    """Two optimizer states (`gather_full_optimizer_state`) hold equal tensors and steps, bit for bit."""
    assert set(got) == set(want), what
    for name, entry in want.items():
        assert entry["step"] is not None and got[name]["step"] == entry["step"], (what, name, "step")
        for key in ("param", "exp_avg", "exp_avg_sq"):
            assert torch.equal(got[name][key], entry[key]), (what, name, key)


def _optimizer_step(run, task) -> dict:
    """One more training step of `run`; its loss, grad norm and the optimizer state after it."""
    from megatron_emu3.checkpoint.full_optimizer_state import gather_full_optimizer_state
    from megatron_emu3.training.trainer import train_one_step

    result = train_one_step(run, task)
    return {"loss": result["loss"], "grad_norm": result["grad_norm"],
            "state": gather_full_optimizer_state(run.chunks, run.optimizer, run.ctx)}


def optimizer_resume(overrides: list[str], run_dir: str) -> dict:
    """Train to train.iters (a checkpoint at the end) and record the optimizer state, then take one more
    step. Build the model and optimizer afresh, load that checkpoint, record what came back and take
    the same step.
    Returns the four states (full layout, `checkpoint/full_optimizer_state.py`) and the two steps."""
    from megatron_emu3.checkpoint.full_optimizer_state import gather_full_optimizer_state
    from megatron_emu3.checkpoint.layout import find_latest
    from megatron_emu3.checkpoint.state import load_checkpoint
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.pretrain import PretrainTask
    from megatron_emu3.training.trainer import build_run, train

    cfg = resolve_config(RECIPE, overrides + [f"run_dir={run_dir}", "checkpoint.save_at_end=true"])
    run = train(cfg)
    saved = gather_full_optimizer_state(run.chunks, run.optimizer, run.ctx)
    straight = _optimizer_step(run, run.task)

    run = build_run(cfg)  # a new model and optimizer on the same process groups
    load_checkpoint(run.checkpoint_parts(), find_latest(Path(run_dir) / "checkpoints"))
    loaded = gather_full_optimizer_state(run.chunks, run.optimizer, run.ctx)
    resumed = _optimizer_step(run, PretrainTask(cfg, run.ctx, run.choice.input_format))
    destroy_distributed()
    return {"saved": saved, "loaded": loaded, "straight": straight, "resumed": resumed}


def optimizer_after_load(overrides: list[str], checkpoint: str) -> dict:
    """Build under `overrides`, load `checkpoint` (any layout); the optimizer state that came back."""
    from megatron_emu3.checkpoint.full_optimizer_state import gather_full_optimizer_state
    from megatron_emu3.checkpoint.state import load_checkpoint
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.trainer import build_run

    run = build_run(resolve_config(RECIPE, overrides))
    try:
        load_checkpoint(run.checkpoint_parts(), checkpoint)
        return gather_full_optimizer_state(run.chunks, run.optimizer, run.ctx)
    finally:
        destroy_distributed()
