"""Save and load a run with megatron-core's dist_checkpointing (torch_dist format).

What a checkpoint holds: the model (sharded, layout-independent), the optimizer (fully reshardable
form, so TP/DP/distributed-optimizer layouts can change between save and load), the train state
(step, consumed samples), every rank's RNG states, the resolved config and the vocabulary facts.
Exact resume restores all of it; a weights-only load (stage 1 -> stage 2) restores the model only.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

from megatron_emu3.checkpoint import layout
from megatron_emu3.checkpoint.vocab_padding import cut_local_rows, request_whole_vocab_tensors, vocab_rows_differ
from megatron_emu3.checkpoint.optimizer_compat import (
    adapt_optimizer_common,
    defer_missing_master_weights,
    fill_master_weights,
    init_empty_adam_state,
    load_optimizer_state,
)
from megatron_emu3.config.loading import save_config
from megatron_emu3.config.validation import padded_vocab_size
from megatron_emu3.data import tokens
from megatron_emu3.model.build import unwrap
from megatron_emu3.training.step import sync_params

logger = logging.getLogger(__name__)

OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not fit the model the config builds."""


def _layout_facts(run) -> dict:
    p = run.cfg.parallel
    return {"world_size": run.env.world_size, "tp": p.tp, "cp": p.cp, "pp": p.pp,
            "distributed_optimizer": p.distributed_optimizer}


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(run, is_loading: bool) -> dict:
    if not is_loading:
        sync_params(run.model)  # parameters the optimizer updated but forward hooks did not gather yet
    model_sd = unwrap(run.model).sharded_state_dict()
    return {
        "model": model_sd,
        "optimizer": run.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=OPTIMIZER_METADATA),
        "train_state": {"step": run.state.step, "consumed_samples": run.state.consumed_samples},
        "layout": _layout_facts(run),
        "rng_state": ShardedObject("rng_state", _rng_state(), (run.env.world_size,), (run.env.rank,), replica_id=0),
    }


def vocab_facts(cfg) -> dict:
    """Tokenizer/vocabulary facts stored with every checkpoint (the converters check them)."""
    return {"vocab_size": cfg.model.vocab_size,
            "padded_vocab_size": padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by,
                                                   cfg.parallel.tp),
            "pad_id": tokens.PAD, "bos_id": tokens.BOS, "eos_id": tokens.EOS,
            "first_vision_code": tokens.FIRST_VISION_CODE, "num_vision_codes": tokens.NUM_VISION_CODES}


def _prepare(ckpt_dir: str | Path, step: int) -> Path:
    """Rank 0 makes an empty ``iter_<step>.partial``; every rank waits for it."""
    partial = layout.partial_dir(ckpt_dir, step)
    if dist.get_rank() == 0:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    dist.barrier()
    return partial


def _publish(cfg, ckpt_dir: str | Path, step: int, keep_last: int) -> Path:
    """After every rank wrote its part: rank 0 adds config/vocab, renames, moves ``latest``."""
    dist.barrier()
    final = Path(ckpt_dir) / layout.iter_dir_name(step)
    if dist.get_rank() == 0:
        partial = layout.partial_dir(ckpt_dir, step)
        save_config(cfg, partial / "config.yaml")
        (partial / "vocab.json").write_text(json.dumps(vocab_facts(cfg), indent=2) + "\n")
        final = layout.commit(ckpt_dir, step, keep_last)
    dist.barrier()
    return final


def _save(sharded: dict, cfg, ckpt_dir: str | Path, step: int, keep_last: int) -> Path:
    """Write `sharded` under ``iter_<step>.partial``, then publish it once all ranks finished."""
    partial = _prepare(ckpt_dir, step)
    dist_checkpointing.save(sharded, str(partial))
    return _publish(cfg, ckpt_dir, step, keep_last)


def save_checkpoint(run, ckpt_dir: str | Path) -> Path:
    """Save `run` at its current step (all ranks call this); returns the published directory."""
    start = time.perf_counter()
    final = _save(_sharded_state(run, is_loading=False), run.cfg, ckpt_dir, run.state.step,
                  run.cfg.checkpoint.keep_last)
    logger.info("saved checkpoint %s in %.2fs", final, time.perf_counter() - start)
    return final


class AsyncSaver:
    """Asynchronous saves: tensors are staged to host memory, written by a background process while
    training goes on, and published (rename + ``latest``) once every rank's writer finished.

    Call `poll()` after every step (publishes finished saves) and `wait()` before exiting or before
    loading. At most one save is in flight: a new one first waits for the previous.
    """

    def __init__(self):
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.queue = AsyncCallsQueue()
        self.published: list[Path] = []

    def save(self, run, ckpt_dir: str | Path) -> None:
        self.wait()
        step, cfg = run.state.step, run.cfg
        start = time.perf_counter()
        partial = _prepare(ckpt_dir, step)
        request = dist_checkpointing.save(_sharded_state(run, is_loading=False), str(partial),
                                          async_sharded_save=True)

        def publish():
            final = _publish(cfg, ckpt_dir, step, cfg.checkpoint.keep_last)
            self.published.append(final)
            logger.info("saved checkpoint %s asynchronously (%.2fs after it started)", final,
                        time.perf_counter() - start)

        request.add_finalize_fn(publish)
        self.queue.schedule_async_request(request)
        logger.info("checkpoint of step %d staged in %.2fs; writing in the background", step,
                    time.perf_counter() - start)

    def poll(self) -> None:
        self.queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        self.queue.maybe_finalize_async_calls(blocking=True)

    def close(self) -> None:
        self.wait()
        self.queue.close()


def save_model_weights(gpt: torch.nn.Module, cfg, ckpt_dir: str | Path, step: int = 0) -> Path:
    """Write a model-only checkpoint (e.g. imported weights) that `load_weights_from` accepts."""
    return _save({"model": gpt.sharded_state_dict()}, cfg, ckpt_dir, step, keep_last=0)


def check_model_shapes(model_sd: dict, path: Path, vocab_size: int) -> None:
    """Raise CheckpointMismatchError naming the first tensor whose global shape differs.

    The vocabulary padding may differ (another TP layout); `vocab_padding` handles those tensors.
    """
    saved = dist_checkpointing.load_tensors_metadata(str(path))
    for key in sorted(model_sd):
        wanted = model_sd[key]
        if not isinstance(wanted, ShardedTensor):
            continue
        if wanted.key not in saved:
            raise CheckpointMismatchError(
                f"checkpoint {path} has no tensor {wanted.key!r}; it was saved from a different architecture "
                "(compare its config.yaml with this run's model section)")
        got = tuple(saved[wanted.key].global_shape)
        if got != tuple(wanted.global_shape) and not vocab_rows_differ(wanted, got, vocab_size):
            raise CheckpointMismatchError(
                f"checkpoint {path}: tensor {wanted.key!r} has shape {got} but this config builds "
                f"{tuple(wanted.global_shape)}; the architectures differ (compare {path}/config.yaml)")


def _load(sharded: dict, path: Path, vocab_size: int) -> dict:
    """dist_checkpointing.load, cutting vocabulary tensors saved with another padding."""
    swaps = request_whole_vocab_tensors(sharded, dist_checkpointing.load_tensors_metadata(str(path)), vocab_size)
    loaded = dist_checkpointing.load(sharded, str(path))
    cut_local_rows(loaded, swaps)
    return loaded


def load_model_weights(gpt: torch.nn.Module, path: str | Path) -> Path:
    """Load only the model tensors of checkpoint `path` into an (unwrapped) GPTModel."""
    path = layout.resolve_checkpoint_path(path)
    vocab_size = gpt.vocab_size_real
    model_sd = gpt.sharded_state_dict()
    check_model_shapes(model_sd, path, vocab_size)
    loaded = _load({"model": model_sd}, path, vocab_size)
    gpt.load_state_dict(loaded["model"])
    return path


def load_checkpoint(run, path: str | Path, weights_only: bool = False) -> Path:
    """Load a checkpoint (a CKPT_DIR with ``latest`` or an iteration dir) into `run`."""
    path = layout.resolve_checkpoint_path(path)
    start = time.perf_counter()
    gpt = unwrap(run.model)
    if weights_only:
        load_model_weights(gpt, path)
        logger.info("loaded model weights only from %s in %.2fs (new optimizer, schedule and step 0)",
                    path, time.perf_counter() - start)
        return path
    init_empty_adam_state(run.optimizer)
    sharded = _sharded_state(run, is_loading=True)
    check_model_shapes(sharded["model"], path, run.cfg.model.vocab_size)
    deferred = defer_missing_master_weights(sharded, set(dist_checkpointing.load_tensors_metadata(str(path))))
    if deferred:
        logger.info("checkpoint has no separate master weights: %d taken from the model weights", len(deferred))
    saved_layout = dist_checkpointing.load_common_state_dict(str(path)).get("layout", {})
    same_layout = saved_layout == _layout_facts(run)
    if not same_layout:
        sharded.pop("rng_state")  # per-rank RNG states only map onto the same layout
    loaded = _load(sharded, path, run.cfg.model.vocab_size)
    gpt.load_state_dict(loaded["model"])
    fill_master_weights(run.optimizer, loaded["optimizer"], deferred)
    adapt_optimizer_common(run.optimizer, loaded["optimizer"])
    load_optimizer_state(run.optimizer, loaded["optimizer"])
    run.state.step = int(loaded["train_state"]["step"])
    run.state.consumed_samples = int(loaded["train_state"]["consumed_samples"])
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    else:
        logger.warning("checkpoint layout %s differs from this run's %s: model and optimizer resharded, "
                       "RNG states reseeded from the config seed", saved_layout, _layout_facts(run))
    logger.info("resumed from %s at step %d (%d samples consumed) in %.2fs", path, run.state.step,
                run.state.consumed_samples, time.perf_counter() - start)
    return path
