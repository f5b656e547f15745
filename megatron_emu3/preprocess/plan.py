"""The work plan: manifests cut into fixed row ranges (shards), the duplicate rule, the Slurm slice.

- Every manifest is cut into shards of `shard_size` rows; shard k of the whole run is written to
  `{output_prefix}_{k:05d}.bin/.idx`. Shard boundaries depend only on the manifests and
  `shard_size`, never on the number of workers, tasks or nodes, so any split of the work (and any
  resume) produces the same files.
- Duplicate rule: a row whose (task, text, media) equals an earlier row's (manifests in the order
  given, then row order) is skipped and reported as a duplicate of that row; media compare by
  resolved path, or by the SHA-1 of the bytes in Parquet. `--keep-duplicates` turns this off.
- Slurm: task i of n (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`,
  else `SLURM_PROCID` of `SLURM_NTASKS`) takes the shards k with k % n == i.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from megatron_emu3.preprocess.manifest import Manifest, Row


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """Rows [start, stop) (0-based) of manifest `manifest_index`, written as shard `index`."""

    index: int
    manifest_index: int
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


def cut_shards(manifests: list[Manifest], shard_size: int) -> list[ShardSpec]:
    """Consecutive shards over all manifests; an empty manifest has no shard."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    shards = []
    for m_index, manifest in enumerate(manifests):
        for start in range(0, manifest.num_rows, shard_size):
            shards.append(ShardSpec(len(shards), m_index, start, min(start + shard_size, manifest.num_rows)))
    return shards


def row_key(row: Row) -> bytes:
    """What makes two rows the same document: task, text and media (path or bytes digest)."""
    media = row.media
    if isinstance(media, bytes):
        media = "sha1:" + hashlib.sha1(media).hexdigest()
    payload = "\x00".join([row.task, row.media_field or "", media or "", row.text,
                            repr(row.segments) if row.segments else ""])
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).digest()


def find_duplicates(manifests: list[Manifest]) -> dict[tuple[int, int], tuple[str, int]]:
    """{(manifest index, row): (manifest name, row) of its first occurrence} over all valid rows."""
    first: dict[bytes, tuple[str, int]] = {}
    duplicates = {}
    for m_index, manifest in enumerate(manifests):
        for row in manifest.rows(0, manifest.num_rows):
            if not isinstance(row, Row):
                continue
            key = row_key(row)
            if key in first:
                duplicates[(m_index, row.row)] = first[key]
            else:
                first[key] = (manifest.name, row.row)
    return duplicates


def slurm_task(env: dict | None = None) -> tuple[int, int]:
    """(task index, task count) from the Slurm environment; (0, 1) outside Slurm."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env:
        task_id = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        count = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
        if not 0 <= task_id < count:
            raise ValueError(
                f"SLURM_ARRAY_TASK_ID {env['SLURM_ARRAY_TASK_ID']} is outside an array of {count} tasks starting at "
                f"{env.get('SLURM_ARRAY_TASK_MIN', 0)}; use a contiguous --array=0-{count - 1} or pass --task-index")
        return task_id, count
    if int(env.get("SLURM_NTASKS", 1)) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    return 0, 1


def task_shards(shards: list[ShardSpec], task_index: int, task_count: int) -> list[ShardSpec]:
    """The shards task `task_index` of `task_count` owns (round robin, so every task gets a share)."""
    if not 0 <= task_index < task_count:
        raise ValueError(f"task index {task_index} is outside [0, {task_count})")
    return [s for s in shards if s.index % task_count == task_index]
