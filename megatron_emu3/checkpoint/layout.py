"""Checkpoint directory layout: ``CKPT_DIR/iter_0000100/`` plus a ``latest`` pointer.

A save writes ``iter_NNNNNNN.partial/``; only after every rank finished does rank 0 rename it to
``iter_NNNNNNN/`` and then atomically replace ``latest`` (a text file holding the directory name).
So a directory without ``.partial`` is complete, and a kill at any moment leaves the previous
checkpoint loadable. Pure filesystem logic, no torch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

ITER_DIR = re.compile(r"^iter_(\d{7})$")
LATEST = "latest"
METADATA = "metadata.json"  # written last by megatron-core's dist_checkpointing.save


def iter_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def partial_dir(ckpt_dir: str | os.PathLike, step: int) -> Path:
    return Path(ckpt_dir) / f"{iter_dir_name(step)}.partial"


def is_complete(path: Path) -> bool:
    """A finished save: the final name and megatron-core's metadata inside."""
    return path.is_dir() and ITER_DIR.match(path.name) is not None and (path / METADATA).is_file()


def complete_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete iteration directories, oldest first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_complete(p)]
    return sorted(found, key=lambda p: int(ITER_DIR.match(p.name).group(1)))


def find_latest(ckpt_dir: str | os.PathLike) -> Optional[Path]:
    """The checkpoint to resume from, or None when there is none.

    Follows ``latest``; when it is missing, points nowhere or at an incomplete directory, falls
    back to the newest complete iteration directory with a warning.
    """
    root = Path(ckpt_dir)
    pointer = root / LATEST
    complete = complete_checkpoints(root)
    if pointer.is_file():
        name = pointer.read_text().strip()
        target = root / name
        if is_complete(target):
            return target
        fallback = complete[-1] if complete else None
        logger.warning("%s names %r, which is %s; using %s instead", pointer, name,
                       "missing" if not target.exists() else "incomplete", fallback or "no checkpoint (fresh start)")
        return fallback
    if complete:
        logger.warning("%s has no 'latest' pointer; using the newest complete checkpoint %s", root, complete[-1].name)
        return complete[-1]
    return None


def commit(ckpt_dir: str | os.PathLike, step: int, keep_last: int) -> Path:
    """Rank 0, after all ranks saved: publish the partial directory, move ``latest``, prune old ones."""
    root = Path(ckpt_dir)
    final = root / iter_dir_name(step)
    if final.exists():  # re-saving the same step (e.g. signal right after an interval save)
        shutil.rmtree(final)
    os.replace(partial_dir(root, step), final)
    tmp = root / f"{LATEST}.tmp"
    tmp.write_text(final.name + "\n")
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)
    if keep_last > 0:
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("iter_*.partial"):
        if stale.name != partial_dir(root, step).name:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def step_of(path: Path) -> int:
    match = ITER_DIR.match(path.name)
    if not match:
        raise ValueError(f"{path} is not an iteration directory (iter_NNNNNNN)")
    return int(match.group(1))


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint given by the user: an iteration directory, or a CKPT_DIR holding ``latest``."""
    path = Path(path)
    if is_complete(path):
        return path
    found = find_latest(path)
    if found is None:
        raise FileNotFoundError(
            f"no complete checkpoint at {path}: expected an iter_NNNNNNN directory with {METADATA}, "
            f"or a checkpoints directory holding one (and a '{LATEST}' file)"
        )
    return found


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
