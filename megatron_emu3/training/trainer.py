"""The training loop, top to bottom: set up ranks, build model + optimizer, resume, step, log, save.

Kept short on purpose (torchtitan's habit): each stage is a call into a module that owns it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.transformer.module import Float16Module

from megatron_emu3.config.loading import save_config
from megatron_emu3.config.schema import Config
from megatron_emu3.config.to_mcore import ddp_config, optimizer_config, transformer_config, uses_bf16
from megatron_emu3.config.validation import validate_config
from megatron_emu3.model.build import build_model
from megatron_emu3.parallel.setup import DistEnv, init_distributed
from megatron_emu3.training.data_feed import build_train_dataset, micro_batches, rank_sample_indices
from megatron_emu3.training.metrics import MetricsWriter
from megatron_emu3.training.schedule import apply_lr, lr_at
from megatron_emu3.training.step import train_step

logger = logging.getLogger("megatron_emu3.train")


@dataclass
class TrainState:
    """Where the run is: optimizer steps done and samples consumed."""

    step: int = 0
    consumed_samples: int = 0


@dataclass
class Run:
    """Everything built for a run (handy for tests that inspect the model after training)."""

    cfg: Config
    env: DistEnv
    model: torch.nn.Module
    optimizer: object
    state: TrainState


def build_run(cfg: Config, env: DistEnv | None = None) -> Run:
    """Initialise distributed state and build the DDP-wrapped model and the optimizer."""
    env = init_distributed(cfg, env)
    validate_config(cfg, env.world_size)
    model = build_model(cfg)
    if torch.cuda.is_available():
        model = model.cuda(torch.cuda.current_device())
    if uses_bf16(cfg):
        model = Float16Module(transformer_config(cfg), model)
    model = DistributedDataParallel(transformer_config(cfg), ddp_config(cfg), model)
    optimizer = get_megatron_optimizer(optimizer_config(cfg), [model])
    return Run(cfg, env, model, optimizer, TrainState())


def train(cfg: Config, env: DistEnv | None = None) -> Run:
    """Train `cfg` to `train.iters` steps; returns the built run."""
    run = build_run(cfg, env)
    cfg, model, optimizer, state = run.cfg, run.model, run.optimizer, run.state
    is_writer = run.env.rank == 0
    if is_writer:
        save_config(cfg, f"{cfg.run_dir}/config.yaml")
    metrics = MetricsWriter(cfg.run_dir, is_writer, cfg.logging.tensorboard)
    dataset = build_train_dataset(cfg)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_length
    logger.info("training %d steps: world %d = tp %d x cp %d x pp %d x dp %d, global batch %d x %d tokens",
                cfg.train.iters, run.env.world_size, cfg.parallel.tp, cfg.parallel.cp, cfg.parallel.pp, dp_size,
                cfg.data.global_batch_size, cfg.data.seq_length)
    model.train()
    while state.step < cfg.train.iters:
        lr = lr_at(state.step, cfg.optimizer, cfg.train.iters)
        apply_lr(optimizer, lr, cfg.optimizer.weight_decay)
        indices = rank_sample_indices(state.consumed_samples, cfg.data.global_batch_size, dp_rank, dp_size)
        batches = micro_batches(dataset, indices, cfg.data.micro_batch_size, device)
        start = time.perf_counter()
        result = train_step(model, optimizer, batches)
        elapsed = time.perf_counter() - start
        state.step += 1
        state.consumed_samples += cfg.data.global_batch_size
        if state.step % cfg.logging.log_interval == 0 or state.step == cfg.train.iters:
            metrics.write({"step": state.step, **result, "lr": lr, "step_time_s": elapsed,
                           "tokens_per_s": tokens_per_step / elapsed,
                           "consumed_samples": state.consumed_samples})
    metrics.close()
    dist.barrier()
    return run
