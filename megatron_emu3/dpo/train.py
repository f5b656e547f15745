"""DPO entry point and loop: the pretraining run (layout, optimizer, checkpoints) with a frozen reference.

    python -m megatron_emu3.dpo.train --config examples/recipes/tiny_dpo.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m megatron_emu3.dpo.train --config RECIPE parallel.tp=2

`build_run` builds the policy exactly as pretraining does (TP/DP, distributed optimizer, bf16); the
reference is a second `GPTModel` of the same layout (`build_model`), frozen in eval mode, holding the
starting weights: ``checkpoint.load_weights_from`` when set, else the policy's initialisation. A run
resumes from ``RUN_DIR/checkpoints`` like pretraining (the reference is rebuilt from the same source).
``data.global_batch_size`` / ``data.micro_batch_size`` count preference *pairs*; every pair needs
``data.seq_length + 1`` tokens or fewer. Records are visited in a seeded order, reshuffled per epoch.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_emu3.config.loading import ConfigError, resolve_config, save_config
from megatron_emu3.config.schema import Config

logger = logging.getLogger("megatron_emu3.dpo")


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_records)


def record_order(num_records: int, seed: int, start: int, count: int) -> list[int]:
    """Record indices for global positions start..start+count: a seeded permutation per epoch."""
    return [int(_epoch_permutation(num_records, seed, p // num_records)[p % num_records])
            for p in range(start, start + count)]


def build_reference(cfg: Config, policy) -> torch.nn.Module:
    """A frozen copy of `policy`'s current weights (same layout and precision), in eval mode."""
    from megatron.core.transformer.module import Float16Module

    from megatron_emu3.config.to_mcore import transformer_config, uses_bf16
    from megatron_emu3.model.build import build_model, unwrap

    gpt = build_model(cfg)
    if torch.cuda.is_available():
        gpt = gpt.cuda(torch.cuda.current_device())
    source = dict(unwrap(policy).named_parameters())
    with torch.no_grad():
        for name, param in gpt.named_parameters():
            param.copy_(source[name].detach())
            param.requires_grad_(False)
    reference = Float16Module(transformer_config(cfg), gpt) if uses_bf16(cfg) else gpt
    return reference.eval()


def micro_batches_for_step(cfg: Config, shard, consumed: int, device) -> list[dict]:
    """This data-parallel rank's micro-batches of the global batch starting at pair `consumed`."""
    from megatron_emu3.dpo.step import preference_batch
    from megatron_emu3.training.data_feed import rank_sample_indices

    span = rank_sample_indices(consumed, cfg.data.global_batch_size, parallel_state.get_data_parallel_rank(),
                               parallel_state.get_data_parallel_world_size())
    records = record_order(len(shard), cfg.seed, span.start, len(span))
    out = []
    for i in range(0, len(records), cfg.data.micro_batch_size):
        chunk = records[i:i + cfg.data.micro_batch_size]
        out.append(preference_batch([shard[r] for r in chunk], cfg.data.seq_length, device,
                                    [f"{shard.prefix} record {r}" for r in chunk]))
    return out


def train_dpo(cfg: Config, env=None):
    """Run DPO to `train.iters` steps; returns (run, reference)."""
    from megatron_emu3.checkpoint.state import load_model_weights, save_checkpoint
    from megatron_emu3.dpo.shards import PreferenceShard
    from megatron_emu3.dpo.step import dpo_step
    from megatron_emu3.training.step import sync_params
    from megatron_emu3.model.build import unwrap
    from megatron_emu3.training.metrics import MetricsWriter
    from megatron_emu3.training.schedule import apply_lr, lr_at
    from megatron_emu3.training.trainer import build_run, checkpoint_dir, current_device, resume_or_initialise

    if not cfg.dpo.data:
        raise ConfigError("dpo.data is not set: give the preference shard prefix (tools/make_preferences.py)")
    if cfg.parallel.cp != 1:
        raise ConfigError(f"parallel.cp={cfg.parallel.cp}: DPO runs without context parallelism; use parallel.cp=1")
    shard = PreferenceShard(cfg.dpo.data, cfg.model.vocab_size)  # validate before building anything
    run = build_run(cfg, env)
    reference = build_reference(cfg, run.model)
    if cfg.checkpoint.load_weights_from:
        load_model_weights(unwrap(reference), cfg.checkpoint.load_weights_from)
    resume_or_initialise(run)
    is_writer = run.env.rank == 0
    if is_writer:
        save_config(cfg, f"{cfg.run_dir}/config.yaml")
    metrics = MetricsWriter(cfg.run_dir, is_writer, cfg.logging.tensorboard)
    device, state = current_device(), run.state
    logger.info("DPO on %d preference pairs (%s), beta %g, sft weight %g, steps %d..%d", len(shard), cfg.dpo.data,
                cfg.dpo.beta, cfg.dpo.sft_weight, state.step + 1, cfg.train.iters)
    run.model.train()
    saved = None
    try:
        while state.step < cfg.train.iters:
            lr = lr_at(state.step, cfg.optimizer, cfg.train.iters)
            apply_lr(run.optimizer, lr, cfg.optimizer.weight_decay)
            batches = micro_batches_for_step(cfg, shard, state.consumed_samples, device)
            start = time.perf_counter()
            result = dpo_step(run.model, reference, run.optimizer, batches, cfg.dpo.beta, cfg.dpo.sft_weight)
            state.step += 1
            state.consumed_samples += cfg.data.global_batch_size
            result.update(lr=lr, step_time_s=time.perf_counter() - start, consumed_samples=state.consumed_samples)
            if state.step % cfg.logging.log_interval == 0 or state.step == cfg.train.iters:
                metrics.write({"step": state.step, **result})
            if cfg.checkpoint.interval and state.step % cfg.checkpoint.interval == 0:
                save_checkpoint(run, checkpoint_dir(cfg))
                saved = state.step
        if cfg.checkpoint.save_at_end and saved != state.step:
            save_checkpoint(run, checkpoint_dir(cfg))
    finally:
        metrics.close()
    sync_params(run.model)  # parameters current on every rank for callers (overlap_param_gather)
    dist.barrier()
    if is_writer:
        (Path(cfg.run_dir) / "COMPLETE").write_text(f"{state.step}\n")
    return run, reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_emu3.dpo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML recipe (examples/recipes/tiny_dpo.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dpo.beta=0.2 train.iters=10")
    args = parser.parse_args(argv)
    from megatron_emu3.logs import configure_logging
    from megatron_emu3.parallel.setup import destroy_distributed, dist_env_from_environ

    configure_logging(dist_env_from_environ().rank)
    try:
        cfg = resolve_config(args.config, args.overrides)
        from megatron_emu3.config.validation import validate_config

        validate_config(cfg, dist_env_from_environ().world_size)
        train_dpo(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if os.environ.get("EMU3_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
