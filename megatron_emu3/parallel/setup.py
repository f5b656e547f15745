"""Start torch.distributed and megatron-core's parallel state for one process of a run.

Works under torchrun (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR env), under Slurm's srun (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID when the env:// variables are absent) and as a single process.
NCCL on GPU, gloo on CPU (where `cpu_compat` is installed first).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket

import torch
import torch.distributed as dist

from megatron_emu3.config.schema import Config
from megatron_emu3.parallel import cpu_compat
from megatron_emu3.parallel.context import ParallelContext, context_from_megatron
from megatron_emu3.parallel.env import DistEnv, dist_env_from_environ

logger = logging.getLogger(__name__)


def init_distributed(cfg: Config, env: DistEnv | None = None, timeout_s: int = 600) -> ParallelContext:
    """Initialise the default process group and megatron-core's model-parallel groups; returns this
    rank's parallel context (the one object the rest of the code reads ranks and groups from)."""
    from megatron.core import parallel_state, tensor_parallel

    env = env or dist_env_from_environ()
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        cpu_compat.install()
    else:
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        if env.world_size == 1:
            # A lone process (tools, single-rank runs) needs no rendezvous: an in-memory store, no
            # port to collide with a job (or another lone process) on this host.
            rendezvous = {"store": dist.HashStore()}
        else:
            rendezvous = {}
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(
            backend="nccl" if on_gpu else "gloo",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            **rendezvous,
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=cfg.parallel.tp,
            pipeline_model_parallel_size=cfg.parallel.pp,
            virtual_pipeline_model_parallel_size=cfg.parallel.vpp,
            context_parallel_size=cfg.parallel.cp,
            create_gloo_process_groups=True,
        )
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
    ctx = context_from_megatron(env.rank, env.world_size, env.local_rank)
    logger.info("rank %d of %d (local %d) on %s: tp rank %d, cp rank %d, pp rank %d, dp rank %d, %s", ctx.rank,
                ctx.world_size, ctx.local_rank, socket.gethostname(), ctx.tp_rank, ctx.cp_rank, ctx.pp_rank,
                ctx.dp_rank, f"cuda:{env.local_rank}" if on_gpu else "cpu/gloo")
    return ctx


def destroy_distributed() -> None:
    """Tear down megatron-core state and every process group, so that a process can initialise again
    (tests reuse processes) without the old groups' threads living on.

    A gloo group lives as long as a Python reference to it, and its threads with it: one transport
    loop and two runners per group, which poll sockets whose peers are gone. megatron-core 0.16 keeps
    two kinds of references that `destroy_model_parallel` leaves: the intra-partial data-parallel
    groups in `parallel_state`, and the `lru_cache` on `RotaryEmbedding.forward`, whose keys hold
    the rotary module (and with it the context-parallel group). Unreleased, every test in a reused
    rank left ~50 threads behind, and the idle ranks of a test session burned a core between them.
    """
    import gc

    from megatron.core import parallel_state
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    parallel_state.destroy_model_parallel()
    for name, value in list(vars(parallel_state).items()):
        if name.isupper() and isinstance(value, dist.ProcessGroup):  # left by destroy_model_parallel
            setattr(parallel_state, name, None)
    RotaryEmbedding.forward.cache_clear()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # groups held only by reference cycles (models, optimizers) go now, not at some later collection
