"""The work plan of an offline job: manifests cut into fixed row ranges (shards) and the Slurm slice.

- Every manifest is cut into shards of `shard_size` rows; shard k of the whole run gets output
  files named after k. Shard boundaries depend only on the manifests and `shard_size`, never on the
  number of workers, tasks or nodes, so any split of the work (and any resume) gives the same files.
- Slurm: task i of n (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`,
  else `SLURM_PROCID` of `SLURM_NTASKS`) takes the shards k with k % n == i.
"""

from __future__ import annotations

import dataclasses
import os


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


def cut_shards(manifests: list, shard_size: int) -> list[ShardSpec]:
    """Consecutive shards over all manifests (anything with `num_rows`); an empty manifest has none."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    shards = []
    for m_index, manifest in enumerate(manifests):
        for start in range(0, manifest.num_rows, shard_size):
            shards.append(ShardSpec(len(shards), m_index, start, min(start + shard_size, manifest.num_rows)))
    return shards


def cli_task(task_index: int | None, task_count: int | None) -> tuple[int, int]:
    """(task index, task count): the command line's --task-index/--task-count where given, else the
    Slurm environment's; ValueError naming the flag when they do not make a task of the run."""
    env_index, env_count = slurm_task()
    index = env_index if task_index is None else task_index
    count = env_count if task_count is None else task_count
    if not 0 <= index < count:
        raise ValueError(f"--task-index {index} is outside [0, --task-count {count})")
    return index, count


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
