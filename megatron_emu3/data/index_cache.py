"""Build an index once, cache it beside the shards as memory-mapped ``.npy`` files, load it everywhere.

Like megatron-core's GPTDataset caches: the directory name is a hash of a JSON *description* of every
input that changes the result (shard files and sizes, seq_len, seed, weights, split, sample count,
algorithm version). The builder writes into a temporary directory and renames it into place, so a
reader never sees half an index; ``description.json`` inside says what the hash stands for.

Who builds: the caller says (``is_builder``); by default rank 0 when torch.distributed is initialised,
else this process. Every rank then passes one barrier (only when torch.distributed is initialised)
and loads with ``mmap_mode="r"``. A rank that finds nothing after the barrier raises with what to do
(usually: the cache directory is not shared between nodes; give a shared ``cache_dir`` or let one
rank per node build with ``is_builder=local_rank == 0``). Every rank must call `load_or_build`:
a rank that skips it hangs the others at the barrier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Callable, Mapping

import numpy as np

logger = logging.getLogger(__name__)

DONE_FILE = "description.json"


def description_hash(description: Mapping) -> str:
    """Hex sha256 (first 20 characters) of the canonical JSON of `description`."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _dist():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def cache_path(cache_root: str, name: str, description: Mapping) -> str:
    return os.path.join(cache_root, f"{name}-{description_hash(description)}")


def load_cached(path: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The arrays and metadata in `path`, memory-mapped, or None when no complete index is there."""
    done = os.path.join(path, DONE_FILE)
    if not os.path.isfile(done):
        return None
    with open(done) as f:
        meta = json.load(f)
    arrays = {name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r") for name in meta["arrays"]}
    return arrays, meta


def _write(path: str, description: Mapping, arrays: Mapping[str, np.ndarray], info: Mapping) -> None:
    parent = os.path.dirname(path) or "."
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    except OSError as err:
        raise OSError(
            f"cannot write the data index cache under {parent!r} ({err}); set the data cache_dir to a "
            "writable directory shared by all ranks"
        ) from err
    try:
        for name, array in arrays.items():
            np.save(os.path.join(tmp, f"{name}.npy"), np.ascontiguousarray(array))
        meta = {"description": dict(description), "arrays": sorted(arrays), "info": dict(info)}
        with open(os.path.join(tmp, DONE_FILE), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True, default=str)
        try:
            os.rename(tmp, path)
        except OSError:
            if load_cached(path) is None:  # someone else's complete copy is fine; anything else is not
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_or_build(cache_root: str, name: str, description: Mapping,
                  build: Callable[[], tuple[Mapping[str, np.ndarray], Mapping]],
                  is_builder: bool | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays (memory-mapped) and info of the index described by `description`; built at most once.

    ``build()`` returns ``(arrays, info)``: arrays are saved as ``NAME.npy``, info (JSON) beside them.
    """
    path = cache_path(cache_root, name, description)
    dist = _dist()
    if is_builder is None:
        is_builder = dist is None or dist.get_rank() == 0
    if is_builder and load_cached(path) is None:
        start = time.perf_counter()
        arrays, info = build()
        info = dict(info, build_seconds=round(time.perf_counter() - start, 3))
        _write(path, description, arrays, info)
        logger.info("built data index %s in %.1f s", path, info["build_seconds"])
    if dist is not None:
        dist.barrier()
    loaded = load_cached(path)
    if loaded is None:
        rank = dist.get_rank() if dist is not None else 0
        raise FileNotFoundError(
            f"rank {rank}: no data index at {path} after the builder ran. Is the cache directory shared "
            "by all ranks? Set the data cache_dir to a shared path, or let one rank per node build "
            "(is_builder = local_rank == 0)."
        )
    return loaded
