"""The training loop, top to bottom: set up ranks, build model + optimizer, resume, step, log, save.

Kept short on purpose (torchtitan's habit): each stage is a call into a module that owns it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.transformer.module import Float16Module

from megatron_emu3.checkpoint.layout import find_latest
from megatron_emu3.checkpoint.signals import StopFlag
from megatron_emu3.checkpoint.state import AsyncSaver, load_checkpoint, save_checkpoint
from megatron_emu3.config.loading import save_config
from megatron_emu3.config.schema import Config
from megatron_emu3.config.to_mcore import ddp_config, optimizer_config, transformer_config, uses_bf16
from megatron_emu3.config.validation import validate_config
from megatron_emu3.model.build import build_model, unwrap
from megatron_emu3.model.full_state import load_full_state
from megatron_emu3.parallel.planner import model_flops_per_token
from megatron_emu3.parallel.setup import DistEnv, init_distributed
from megatron_emu3.training.data_feed import build_datasets, micro_batches, rank_sample_indices
from megatron_emu3.training.metrics import MetricsWriter
from megatron_emu3.training.schedule import apply_lr, lr_at
from megatron_emu3.training.step import eval_step, sync_params, train_step

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


def build_run(cfg: Config, env: DistEnv | None = None, full_state: dict | None = None) -> Run:
    """Initialise distributed state and build the DDP-wrapped model and the optimizer.

    `full_state` (TP=1 layout, see `model/full_state.py`) replaces the random initialisation.
    """
    env = init_distributed(cfg, env)
    validate_config(cfg, env.world_size)
    model = build_model(cfg)
    if full_state is not None:
        load_full_state(model, full_state, parallel_state.get_tensor_model_parallel_rank(),
                        parallel_state.get_tensor_model_parallel_world_size())
    if torch.cuda.is_available():
        model = model.cuda(torch.cuda.current_device())
    if uses_bf16(cfg):
        model = Float16Module(transformer_config(cfg), model)
    model = DistributedDataParallel(transformer_config(cfg), ddp_config(cfg), model)
    optimizer = get_megatron_optimizer(optimizer_config(cfg), [model])
    return Run(cfg, env, model, optimizer, TrainState())


def current_device() -> torch.device:
    """The GPU of this rank, or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def rank_micro_batches(run: Run, dataset, indices, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches of `indices`, in the layout its attention backend reads."""
    p = run.cfg.parallel
    return micro_batches(dataset, indices, run.cfg.data.micro_batch_size, device,
                         parallel_state.get_context_parallel_world_size(),
                         parallel_state.get_context_parallel_rank(), unwrap(run.model).input_format,
                         p.tp if p.sequence_parallel else 1)


def train_one_step(run: Run, dataset, device: torch.device) -> dict:
    """Set the LR, fetch this rank's micro-batches, step, advance the state; returns the metrics."""
    cfg, state = run.cfg, run.state
    lr = lr_at(state.step, cfg.optimizer, cfg.train.iters)
    apply_lr(run.optimizer, lr, cfg.optimizer.weight_decay)
    indices = rank_sample_indices(state.consumed_samples, cfg.data.global_batch_size,
                                  parallel_state.get_data_parallel_rank(),
                                  parallel_state.get_data_parallel_world_size())
    start = time.perf_counter()  # the step's time includes reading and laying out its data
    batches = rank_micro_batches(run, dataset, indices, device)
    result = train_step(run.model, run.optimizer, batches)
    elapsed = time.perf_counter() - start
    state.step += 1
    state.consumed_samples += cfg.data.global_batch_size
    tokens = cfg.data.global_batch_size * cfg.data.seq_length
    # Model FLOPs (parallel/planner.py: causal attention counted as half over the whole sample, as
    # Megatron-LM counts it) per second and per rank, the throughput figure clusters are compared on.
    tflops = model_flops_per_token(cfg) * tokens / elapsed / run.env.world_size / 1e12
    return {**result, "lr": lr, "step_time_s": elapsed, "tokens_per_s": tokens / elapsed,
            "tflops_per_gpu": tflops, "consumed_samples": state.consumed_samples}


def evaluate(run: Run, dataset, device: torch.device, evaluation: int) -> dict:
    """Validation loss over `train.eval_iters` global batches (evaluation k reads its own samples)."""
    cfg = run.cfg
    start = evaluation * cfg.train.eval_iters * cfg.data.global_batch_size
    stats = []
    run.model.eval()
    for k in range(cfg.train.eval_iters):
        indices = rank_sample_indices(start + k * cfg.data.global_batch_size, cfg.data.global_batch_size,
                                      parallel_state.get_data_parallel_rank(),
                                      parallel_state.get_data_parallel_world_size())
        batches = rank_micro_batches(run, dataset, indices, device)
        stats.append(eval_step(run.model, batches))
    run.model.train()
    keys = ("loss", "text_loss", "vision_loss")
    return {f"valid_{k}": (sum(s[k] for s in stats) / len(stats)) if all(s[k] is not None for s in stats) else None
            for k in keys}


def resume_or_initialise(run: Run) -> None:
    """Resume from RUN_DIR/checkpoints when it holds a complete checkpoint, else load stage weights."""
    cfg = run.cfg
    found = find_latest(checkpoint_dir(cfg))
    if found is not None:
        load_checkpoint(run, found)
    elif cfg.checkpoint.load_weights_from:
        load_checkpoint(run, cfg.checkpoint.load_weights_from, weights_only=True)
    else:
        logger.info("no checkpoint in %s: starting from random initialisation (seed %d)",
                    checkpoint_dir(cfg), cfg.seed)


def checkpoint_dir(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "checkpoints"


def train(cfg: Config, env: DistEnv | None = None) -> Run:
    """Train `cfg` to `train.iters` steps (resuming if possible); returns the built run."""
    run = build_run(cfg, env)
    cfg, model, state = run.cfg, run.model, run.state
    is_writer = run.env.rank == 0
    if is_writer:
        save_config(cfg, f"{cfg.run_dir}/config.yaml")
    resume_or_initialise(run)
    metrics = MetricsWriter(cfg.run_dir, is_writer, cfg.logging.tensorboard)
    dataset, valid = build_datasets(cfg)
    data_record = {}  # shard datasets: oversize vision documents left out, in the first record of a launch
    if getattr(dataset, "info", None):
        from megatron_emu3.data.dataset import data_metrics

        data_record = data_metrics(dataset.info)
    device = current_device()
    dp_size = parallel_state.get_data_parallel_world_size()
    logger.info("training steps %d..%d: world %d = tp %d x cp %d x pp %d x dp %d, global batch %d x %d tokens",
                state.step + 1, cfg.train.iters, run.env.world_size, cfg.parallel.tp, cfg.parallel.cp,
                cfg.parallel.pp, dp_size, cfg.data.global_batch_size, cfg.data.seq_length)
    stop = StopFlag().install()
    saved_step = state.step if find_latest(checkpoint_dir(cfg)) else None
    saver = AsyncSaver() if cfg.checkpoint.async_save else None

    def save() -> None:
        if saver is not None:
            saver.save(run, checkpoint_dir(cfg))
        else:
            save_checkpoint(run, checkpoint_dir(cfg))

    model.train()
    try:
        while state.step < cfg.train.iters:
            result = train_one_step(run, dataset, device)
            if cfg.train.eval_interval and valid is not None and state.step % cfg.train.eval_interval == 0:
                result.update(evaluate(run, valid, device, state.step // cfg.train.eval_interval - 1))
            if state.step % cfg.logging.log_interval == 0 or state.step == cfg.train.iters:
                metrics.write({"step": state.step, **result, **data_record})
                data_record = {}
            if saver is not None:
                saver.poll()
            interval = cfg.checkpoint.interval
            if interval and state.step % interval == 0:
                save()
                saved_step = state.step
            if stop.agreed(device):
                if saved_step != state.step:
                    save()
                if saver is not None:
                    saver.wait()
                logger.warning("saved checkpoint on signal at step %d; exiting (resume by relaunching)", state.step)
                return run
        if cfg.checkpoint.save_at_end and saved_step != state.step:
            save()
        if saver is not None:
            saver.wait()
    finally:
        if saver is not None:
            saver.queue.close(abort=True)  # after wait() this only stops the idle writer
        stop.uninstall()
        metrics.close()
    sync_params(model)  # callers may read the parameters (overlap_param_gather defers the last gather)
    dist.barrier()
    if is_writer:
        (Path(cfg.run_dir) / "COMPLETE").write_text(f"{state.step}\n")
    logger.info("training complete at step %d", state.step)
    return run
