"""The one training loop, for every task (pretraining, QFT, DPO), top to bottom.

Set up ranks, build the model and optimizer, resume, then step: LR schedule, the task's step on
megatron-core's schedule, metrics and evaluation, interval / signal / end saves (async if asked),
`COMPLETE`. A task (`training/task.py`) supplies its batches, loss and metrics; the loop owns the rest.
Kept short on purpose (torchtitan's habit): each stage is a call into a module that owns it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from megatron.core.optimizer import get_megatron_optimizer

from megatron_emu3.checkpoint.layout import find_latest
from megatron_emu3.checkpoint.signals import StopFlag
from megatron_emu3.checkpoint.state import (
    AsyncSaver,
    TrainProgress,
    load_checkpoint,
    load_model_weights,
    run_state,
    save_checkpoint,
)
from megatron_emu3.config.loading import save_config
from megatron_emu3.config.schema import Config
from megatron_emu3.config.to_mcore import optimizer_config
from megatron_emu3.config.validation import validate_config
from megatron_emu3.model.build import build_model_chunks, decoder_choice, unwrap
from megatron_emu3.model.full_state import load_full_state
from megatron_emu3.model.spec import DecoderChoice
from megatron_emu3.parallel.context import ParallelContext
from megatron_emu3.parallel.ddp import sync_params, wrap_chunks
from megatron_emu3.parallel.env import DistEnv
from megatron_emu3.parallel.setup import init_distributed
from megatron_emu3.training.metrics import MetricsWriter
from megatron_emu3.training.run_lock import RunDirLockedError, RunLock
from megatron_emu3.training.schedule import apply_lr, lr_at
from megatron_emu3.training.step import eval_step, train_step
from megatron_emu3.training.task import Task

logger = logging.getLogger("megatron_emu3.train")


@dataclass
class Run:
    """Everything built for a run (handy for tests that inspect the model after training)."""

    cfg: Config
    ctx: ParallelContext
    chunks: list
    """This rank's wrapped model chunks: one, or `parallel.vpp` virtual pipeline stages."""
    optimizer: object
    state: TrainProgress
    choice: DecoderChoice
    """The decoder spec and the input format its attention reads."""
    task: Optional[Task] = None
    """What is being trained (set by `train`)."""

    @property
    def model(self) -> torch.nn.Module:
        """The wrapped model of a run without virtual pipeline stages."""
        if len(self.chunks) != 1:
            raise AttributeError(f"this run has {len(self.chunks)} virtual pipeline chunks: use run.chunks")
        return self.chunks[0]

    def checkpoint_parts(self) -> dict:
        return run_state(self.cfg, self.ctx, self.chunks, self.optimizer, self.state)


def build_run(cfg: Config, env: DistEnv | None = None, full_state: dict | None = None) -> Run:
    """Initialise distributed state and build the DDP-wrapped model and the optimizer.

    `full_state` (TP=1 layout, see `model/full_state.py`) replaces the random initialisation.
    """
    ctx = init_distributed(cfg, env)
    validate_config(cfg, ctx.world_size)
    choice = decoder_choice(cfg)
    gpts = build_model_chunks(cfg, choice)
    if full_state is not None:
        for gpt in gpts:
            load_full_state(gpt, full_state, ctx.tp_rank, ctx.tp_size)
    chunks = wrap_chunks(cfg, gpts)
    optimizer = get_megatron_optimizer(optimizer_config(cfg), chunks)
    return Run(cfg, ctx, chunks, optimizer, TrainProgress(), choice)


def checkpoint_dir(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "checkpoints"


def resume_or_initialise(run: Run) -> None:
    """Resume from RUN_DIR/checkpoints when it holds a complete checkpoint, else load stage weights."""
    cfg = run.cfg
    found = find_latest(checkpoint_dir(cfg))
    if found is not None:
        load_checkpoint(run.checkpoint_parts(), found)
    elif cfg.checkpoint.load_weights_from:
        load_model_weights([unwrap(c) for c in run.chunks], cfg.checkpoint.load_weights_from, cfg.model.vocab_size)
    else:
        logger.info("no checkpoint in %s: starting from random initialisation (seed %d)",
                    checkpoint_dir(cfg), cfg.seed)


def train_one_step(run: Run, task: Task) -> dict:
    """Set the LR, read this rank's micro-batches, step, advance the state; returns the metrics."""
    cfg, state = run.cfg, run.state
    lr = lr_at(state.step, cfg.optimizer, cfg.train.iters)
    apply_lr(run.optimizer, lr, cfg.optimizer.weight_decay)
    start = time.perf_counter()  # the step's time includes reading and laying out its data
    result = train_step(run.chunks, run.optimizer, task, task.train_batches(state.consumed_samples), run.ctx)
    elapsed = time.perf_counter() - start
    state.step += 1
    state.consumed_samples += cfg.data.global_batch_size
    return {**result, "lr": lr, "step_time_s": elapsed, **task.throughput(elapsed, run.ctx.world_size),
            "consumed_samples": state.consumed_samples}


def evaluate(run: Run, task: Task, evaluation: int) -> dict:
    """The task's metrics over `train.eval_iters` held-out global batches, averaged, prefixed valid_."""
    stats = []
    for chunk in run.chunks:
        chunk.eval()
    for k in range(run.cfg.train.eval_iters):
        batches = task.eval_batches(evaluation, k)
        if batches is None:
            break
        stats.append(eval_step(run.chunks, task, batches, run.ctx))
    for chunk in run.chunks:
        chunk.train()
    if not stats:
        return {}
    keys = [k for k, v in stats[0].items() if isinstance(v, float) or v is None]
    return {f"valid_{k}": (sum(s[k] for s in stats) / len(stats)) if all(s[k] is not None for s in stats) else None
            for k in keys}


def train(cfg: Config, env: DistEnv | None = None, make_task: Optional[Callable[[Run], Task]] = None) -> Run:
    """Train `cfg` to `train.iters` steps (resuming if possible) on the task `make_task(run)` builds
    (default: pretraining); returns the built run (with its task)."""
    run = build_run(cfg, env)
    cfg, ctx = run.cfg, run.ctx
    lock = lock_run_dir(cfg.run_dir, ctx)
    try:
        if ctx.rank == 0:
            save_config(cfg, f"{cfg.run_dir}/config.yaml")
        run.task = make_task(run) if make_task is not None else _pretrain_task(run)
        resume_or_initialise(run)
        completed = _loop(run, run.task)
        sync_params(run.chunks)  # callers may read the parameters (overlap_param_gather defers the last gather)
        dist.barrier()
        if completed and ctx.rank == 0:
            (Path(cfg.run_dir) / "COMPLETE").write_text(f"{run.state.step}\n")
    finally:
        if lock is not None:
            lock.release()
    if completed:
        logger.info("training complete at step %d", run.state.step)
    return run


def lock_run_dir(run_dir: str, ctx: ParallelContext) -> Optional[RunLock]:
    """Rank 0 takes the run directory's lock; every rank raises when it is held by a live run."""
    lock, error = None, None
    if ctx.rank == 0:
        try:
            lock = RunLock(run_dir).acquire()
        except RunDirLockedError as err:
            error = err
    taken = torch.tensor([0 if error else 1], dtype=torch.int32, device=ctx.device)
    dist.broadcast(taken, src=0)
    if error is not None:
        raise error
    if not taken.item():
        raise RunDirLockedError(f"run directory {run_dir} is in use by a live run (rank 0 says which)")
    return lock


def _pretrain_task(run: Run) -> Task:
    from megatron_emu3.training.pretrain import PretrainTask

    return PretrainTask(run.cfg, run.ctx, run.choice.input_format)


def _loop(run: Run, task: Task) -> bool:
    """Step to train.iters; False when a stop signal ended the run early (after saving)."""
    cfg, state, ctx = run.cfg, run.state, run.ctx
    metrics = MetricsWriter(cfg.run_dir, ctx.rank == 0, cfg.logging.tensorboard)
    logger.info("%s steps %d..%d: %s, global batch %d x %d tokens", task.name, state.step + 1, cfg.train.iters,
                ctx.describe(), cfg.data.global_batch_size, cfg.data.seq_length)
    launch_record = task.launch_metrics()  # e.g. oversize documents left out: in this launch's first record
    stop = StopFlag().install()
    saved_step = state.step if find_latest(checkpoint_dir(cfg)) else None
    saver = AsyncSaver() if cfg.checkpoint.async_save else None

    def save() -> None:
        parts = run.checkpoint_parts()
        if saver is not None:
            saver.save(parts, checkpoint_dir(cfg), cfg)
        else:
            save_checkpoint(parts, checkpoint_dir(cfg), cfg)

    for chunk in run.chunks:
        chunk.train()
    try:
        while state.step < cfg.train.iters:
            result = train_one_step(run, task)
            if cfg.train.eval_interval and state.step % cfg.train.eval_interval == 0:
                result.update(evaluate(run, task, state.step // cfg.train.eval_interval - 1))
            if state.step % cfg.logging.log_interval == 0 or state.step == cfg.train.iters:
                metrics.write({"step": state.step, **result, **launch_record})
                launch_record = {}
            if saver is not None:
                saver.poll()
            interval = cfg.checkpoint.interval
            if interval and state.step % interval == 0:
                save()
                saved_step = state.step
            if stop.agreed(ctx.device):
                if saved_step != state.step:
                    save()
                if saver is not None:
                    saver.wait()
                logger.warning("saved checkpoint on signal at step %d; exiting (resume by relaunching)", state.step)
                return False
        if cfg.checkpoint.save_at_end and saved_step != state.step:
            save()
        if saver is not None:
            saver.wait()
        return True
    finally:
        if saver is not None:
            saver.queue.close(abort=True)  # after wait() this only stops the idle writer
        stop.uninstall()
        metrics.close()
