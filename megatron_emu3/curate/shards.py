"""A curation shard on disk: `{prefix}_shards/{k:05d}.jsonl` (one decision per line, in row order)
and `{k:05d}.json` (its record: fingerprint, rows, counts, timings). Both are written under hidden
partial names and renamed, the record last, so a shard is complete exactly when its record exists."""

from __future__ import annotations

import json
import os
from pathlib import Path

from megatron_emu3.offline.plan import ShardSpec

FORMAT_VERSION = 1


class ShardMismatchError(RuntimeError):
    """A complete shard on disk was written from other manifests or rules."""


def shard_dir(output_prefix: str | Path) -> Path:
    return Path(f"{output_prefix}_shards")


def shard_paths(output_prefix: str | Path, index: int) -> tuple[Path, Path]:
    base = shard_dir(output_prefix) / f"{index:05d}"
    return base.with_suffix(".jsonl"), base.with_suffix(".json")


def read_complete(output_prefix: str | Path, index: int, fingerprint: str) -> dict | None:
    """The record of a complete shard with this fingerprint; None if incomplete; raises on a mismatch."""
    decisions, record = shard_paths(output_prefix, index)
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    if data.get("fingerprint") != fingerprint:
        raise ShardMismatchError(
            f"{record} was written from other manifests or rules (fingerprint {data.get('fingerprint')} != "
            f"{fingerprint}); delete {shard_dir(output_prefix)} and the outputs or choose another --output-prefix")
    return data if decisions.is_file() else None


def read_decisions(output_prefix: str | Path, index: int) -> list[dict]:
    decisions, _ = shard_paths(output_prefix, index)
    with open(decisions, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def remove_shard(output_prefix: str | Path, index: int) -> None:
    for path in shard_paths(output_prefix, index):
        path.unlink(missing_ok=True)
        _partial(path).unlink(missing_ok=True)


class ShardWriter:
    """Streams one shard's decisions to a partial file; `commit()` makes the shard complete."""

    def __init__(self, output_prefix: str | Path, spec: ShardSpec, fingerprint: str):
        self.decisions, self.record_path = shard_paths(output_prefix, spec.index)
        self.decisions.parent.mkdir(parents=True, exist_ok=True)
        remove_shard(output_prefix, spec.index)
        self._file = open(_partial(self.decisions), "w", encoding="utf-8")
        self.record = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "rows": spec.num_rows,
                       "kept": 0, "dropped": 0}

    def add(self, decision: dict) -> None:
        self._file.write(json.dumps(decision, ensure_ascii=False, sort_keys=True) + "\n")
        self.record["kept" if decision["status"] == "kept" else "dropped"] += 1

    def commit(self) -> dict:
        self._file.close()
        os.replace(_partial(self.decisions), self.decisions)
        tmp = _partial(self.record_path)
        tmp.write_text(json.dumps(self.record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.record_path)
        return self.record
