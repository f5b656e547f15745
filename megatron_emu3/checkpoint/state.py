"""Save and load named state objects with megatron-core's dist_checkpointing (torch_dist format).

A checkpoint is a dict of named parts, each a small object with `sharded_state(is_loading, parts)`
(what to save, or the request to load into) and `load_state(loaded)`. `run_state` gives the parts
of a training run: the model (sharded, layout-independent), the optimizer (fully reshardable form,
so TP/DP/distributed-optimizer layouts can change between save and load), the train progress (step,
consumed samples = the data position), the parallel layout and every rank's RNG states. A part that
is only meaningful on the layout it was saved from (`layout_bound`: the RNG states) is skipped when
the layout changed. Exact resume restores all of it; `load_model_weights` restores the model only.
This package knows nothing of the trainer: callers hand it parts.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

from megatron_emu3.checkpoint import layout
from megatron_emu3.checkpoint.optimizer_compat import (
    adapt_optimizer_common,
    defer_missing_master_weights,
    fill_master_weights,
    init_empty_adam_state,
    load_optimizer_state,
)
from megatron_emu3.checkpoint.vocab_padding import cut_local_rows, request_whole_vocab_tensors, vocab_rows_differ
from megatron_emu3.config.loading import save_config
from megatron_emu3.config.validation import padded_vocab_size
from megatron_emu3.data import tokens
from megatron_emu3.model.build import unwrap
from megatron_emu3.parallel.context import ParallelContext
from megatron_emu3.parallel.ddp import sync_params

logger = logging.getLogger(__name__)

OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not fit the model the config builds."""


class Stateful(Protocol):
    """A named part of a checkpoint."""

    def sharded_state(self, is_loading: bool, parts: Mapping[str, Any]) -> Any:
        """What to save (or the request to load into); `parts`: the parts built before this one."""

    def load_state(self, loaded: Any) -> None:
        """Take the loaded values."""


@dataclass
class TrainProgress:
    """Where the run is: optimizer steps done and samples consumed (the data position)."""

    step: int = 0
    consumed_samples: int = 0

    def sharded_state(self, is_loading: bool, parts) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed_samples}

    def load_state(self, loaded: dict) -> None:
        self.step = int(loaded["step"])
        self.consumed_samples = int(loaded["consumed_samples"])


def _model_sharded_state(gpts: list) -> dict:
    """The sharded state of one GPTModel, or of each virtual pipeline chunk under ``model<i>`` (the
    files hold layer-indexed global tensors either way, so pipeline layouts reshard freely)."""
    if len(gpts) == 1:
        return gpts[0].sharded_state_dict()
    return {f"model{i}": gpt.sharded_state_dict() for i, gpt in enumerate(gpts)}


def _load_model_state(gpts: list, loaded: dict) -> None:
    if len(gpts) == 1:
        gpts[0].load_state_dict(loaded)
    else:
        for i, gpt in enumerate(gpts):
            gpt.load_state_dict(loaded[f"model{i}"])


class ModelState:
    """The model's sharded tensors (synced first when parameter gathers are deferred); `model`: a
    wrapped model or this rank's list of pipeline chunks."""

    def __init__(self, model, vocab_size: int):
        self.chunks = list(model) if isinstance(model, (list, tuple)) else [model]
        self.vocab_size = vocab_size

    def sharded_state(self, is_loading: bool, parts) -> dict:
        if not is_loading:
            sync_params(self.chunks)  # parameters the optimizer updated but forward hooks did not gather yet
        return _model_sharded_state([unwrap(c) for c in self.chunks])

    def before_load(self, request: dict, path: Path, saved_keys: set) -> None:
        check_model_shapes(request, path, self.vocab_size)

    def load_state(self, loaded: dict) -> None:
        _load_model_state([unwrap(c) for c in self.chunks], loaded)


class OptimizerState:
    """megatron-core's optimizer in its fully reshardable form, keyed on the model part's tensors."""

    def __init__(self, optimizer, model_part: str = "model"):
        self.optimizer, self.model_part, self.deferred = optimizer, model_part, []

    def sharded_state(self, is_loading: bool, parts) -> dict:
        if is_loading:
            init_empty_adam_state(self.optimizer)
        return self.optimizer.sharded_state_dict(parts[self.model_part], is_loading=is_loading,
                                                 metadata=OPTIMIZER_METADATA)

    def before_load(self, request: dict, path: Path, saved_keys: set) -> None:
        self.deferred = defer_missing_master_weights({"optimizer": request}, saved_keys)
        if self.deferred:
            logger.info("checkpoint has no separate master weights: %d taken from the model weights",
                        len(self.deferred))

    def load_state(self, loaded: dict) -> None:
        fill_master_weights(self.optimizer, loaded, self.deferred)
        adapt_optimizer_common(self.optimizer, loaded)
        load_optimizer_state(self.optimizer, loaded)


class LayoutFacts:
    """The parallel layout a checkpoint was written under (parts marked `layout_bound` need the same)."""

    def __init__(self, cfg, ctx: ParallelContext):
        p = cfg.parallel
        self.facts = {"world_size": ctx.world_size, "tp": p.tp, "cp": p.cp, "pp": p.pp,
                      "distributed_optimizer": p.distributed_optimizer}

    def sharded_state(self, is_loading: bool, parts) -> dict:
        return dict(self.facts)

    def load_state(self, loaded: dict) -> None:
        pass  # compared before loading (see load_checkpoint); nothing to restore


class RngState:
    """Every rank's Python, numpy, torch (CPU/CUDA) and tensor-parallel tracker RNG states."""

    layout_bound = True

    def __init__(self, ctx: ParallelContext):
        self.ctx = ctx

    def sharded_state(self, is_loading: bool, parts) -> ShardedObject:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                 "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return ShardedObject("rng_state", state, (self.ctx.world_size,), (self.ctx.rank,), replica_id=0)

    def load_state(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"])
        tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def run_state(cfg, ctx: ParallelContext, model, optimizer, progress: TrainProgress) -> dict[str, Stateful]:
    """The parts of a training run's checkpoint, in the order they must be built."""
    return {"model": ModelState(model, cfg.model.vocab_size), "optimizer": OptimizerState(optimizer),
            "train_state": progress, "layout": LayoutFacts(cfg, ctx), "rng_state": RngState(ctx)}


def _sharded(parts: Mapping[str, Stateful], is_loading: bool) -> dict:
    built: dict[str, Any] = {}
    for name, part in parts.items():
        built[name] = part.sharded_state(is_loading, built)
    return built


def vocab_facts(cfg) -> dict:
    """Tokenizer/vocabulary facts stored with every checkpoint (the converters check them)."""
    return {"vocab_size": cfg.model.vocab_size,
            "padded_vocab_size": padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by,
                                                   cfg.parallel.tp),
            "pad_id": tokens.PAD, "bos_id": tokens.BOS, "eos_id": tokens.EOS,
            "first_vision_code": tokens.FIRST_VISION_CODE, "num_vision_codes": tokens.NUM_VISION_CODES}


def _forked_write_results_queue() -> None:
    """Give megatron-core's checkpoint writers a results queue served by a forked process.

    On a process's first save, megatron-core (0.16) starts a multiprocessing Manager for its writers'
    results with the *spawn* method: a fresh interpreter that imports torch and
    torch.distributed.checkpoint again to unpickle those results, about 2 s of CPU that the first save
    waits for. A forked manager serves the same queue with what this process has imported already.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", False) is None:  # only where 0.16's lazy global exists
        filesystem_async._results_queue = multiprocessing.get_context("fork").Manager().Queue()


def _prepare(ckpt_dir: str | Path, step: int) -> Path:
    """Rank 0 makes an empty ``iter_<step>.partial``; every rank waits for it."""
    _forked_write_results_queue()
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


def save_checkpoint(parts: Mapping[str, Stateful], ckpt_dir: str | Path, cfg) -> Path:
    """Save `parts` at the step of their ``train_state`` (all ranks call this); returns the published dir."""
    start = time.perf_counter()
    final = _save(_sharded(parts, is_loading=False), cfg, ckpt_dir, parts["train_state"].step,
                  cfg.checkpoint.keep_last)
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

    def save(self, parts: Mapping[str, Stateful], ckpt_dir: str | Path, cfg) -> None:
        self.wait()
        step = parts["train_state"].step
        start = time.perf_counter()
        partial = _prepare(ckpt_dir, step)
        request = dist_checkpointing.save(_sharded(parts, is_loading=False), str(partial), async_sharded_save=True)

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
    for wanted in sorted(nested_values(model_sd), key=lambda t: getattr(t, "key", "")):
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


def load_model_weights(gpt, path: str | Path, vocab_size: int) -> Path:
    """Load only the model tensors of checkpoint `path` into an (unwrapped) GPTModel, or a list of
    pipeline chunks, whose first `vocab_size` embedding rows are real."""
    path = layout.resolve_checkpoint_path(path)
    start = time.perf_counter()
    gpts = list(gpt) if isinstance(gpt, (list, tuple)) else [gpt]
    model_sd = _model_sharded_state(gpts)
    check_model_shapes(model_sd, path, vocab_size)
    loaded = _load({"model": model_sd}, path, vocab_size)
    _load_model_state(gpts, loaded["model"])
    logger.info("loaded model weights only from %s in %.2fs", path, time.perf_counter() - start)
    return path


def load_checkpoint(parts: Mapping[str, Stateful], path: str | Path) -> Path:
    """Load a checkpoint (a CKPT_DIR with ``latest`` or an iteration dir) into `parts`."""
    path = layout.resolve_checkpoint_path(path)
    start = time.perf_counter()
    request = _sharded(parts, is_loading=True)
    saved_keys = set(dist_checkpointing.load_tensors_metadata(str(path)))
    for name, part in parts.items():
        if hasattr(part, "before_load"):
            part.before_load(request[name], path, saved_keys)
    saved_layout = dist_checkpointing.load_common_state_dict(str(path)).get("layout", {})
    same_layout = "layout" not in parts or saved_layout == request["layout"]
    skipped = [] if same_layout else [name for name, part in parts.items() if getattr(part, "layout_bound", False)]
    for name in skipped:
        request.pop(name)
    vocab_size = parts["model"].vocab_size if "model" in parts else 0
    loaded = _load(request, path, vocab_size)
    for name, part in parts.items():
        if name not in skipped:
            part.load_state(loaded[name])
    if skipped:
        logger.warning("checkpoint layout %s differs from this run's %s: model and optimizer resharded, "
                       "%s reseeded from the config seed", saved_layout, request["layout"], ", ".join(skipped))
    progress = parts.get("train_state")
    logger.info("resumed from %s%s in %.2fs", path, f" at step {progress.step} ({progress.consumed_samples} "
                f"samples consumed)" if progress is not None else "", time.perf_counter() - start)
    return path
