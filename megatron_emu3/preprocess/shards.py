"""Shard files: written under hidden temporary names, renamed when complete, and recognised on resume.

Shard k of a run is `{prefix}_{k:05d}.bin` + `.idx` (megatron-core IndexedDataset, int32, one
document per item, each document's `DocKind` in the per-document modes) and `{prefix}_{k:05d}.json`,
the shard's record: rows seen, documents and tokens written, every skipped row with its reason, the
items made smaller to fit the context (`resized_to_fit`, see preprocess/fit.py), the vision
tokenizer and its id layout (`vision_layout`, `tokens.VisionLayout`) and the settings fingerprint. While a shard is written its files are `.{name}.partial.*` in the same
directory; `.bin` and `.idx` are renamed first and the record last, so a shard is complete exactly
when its record exists. A shard whose rows were all skipped has a record and no `.bin`/`.idx`
(megatron-core cannot open an empty dataset).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from megatron_emu3.data.tokens import EMU3_VISION, DocKind, VisionLayout, is_vision_code

SHARD_FORMAT_VERSION = 1
RESIZE_KINDS = ("image", "video", "video_shortened", "interleaved")
"""Documents made smaller to fit the context: images scaled down, videos with smaller frames, videos
with smaller frames and fewer of them, interleaved documents with every picture / clip scaled down."""


class ShardMismatchError(RuntimeError):
    """A complete shard on disk was written with other inputs or settings."""


def shard_prefix(output_prefix: str | Path, index: int) -> Path:
    return Path(f"{output_prefix}_{index:05d}")


def _partial(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def record_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".json")


def read_complete(prefix: Path, fingerprint: str) -> dict | None:
    """The record of a complete shard with this fingerprint; None if incomplete; raises on a mismatch."""
    record = record_path(prefix)
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    if data.get("fingerprint") != fingerprint:
        raise ShardMismatchError(
            f"{record} was written from other manifests or settings (fingerprint {data.get('fingerprint')} "
            f"!= {fingerprint}); delete that shard set or choose another --output-prefix")
    if data["documents_written"] and not (Path(f"{prefix}.bin").is_file() and Path(f"{prefix}.idx").is_file()):
        return None
    return data


def remove_shard(prefix: Path) -> None:
    """Delete every file of a shard, complete or partial."""
    for suffix in (".bin", ".idx", ".json"):
        for path in (Path(f"{prefix}{suffix}"), Path(f"{_partial(prefix)}{suffix}")):
            path.unlink(missing_ok=True)


class ShardWriter:
    """Collects one shard's documents and its record; `commit()` makes it visible atomically."""

    def __init__(self, prefix: Path, fingerprint: str, rows: int, layout: VisionLayout = EMU3_VISION):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix, self.layout = Path(prefix), layout
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        remove_shard(self.prefix)
        self._tmp = _partial(self.prefix)
        self._builder = IndexedDatasetBuilder(f"{self._tmp}.bin", dtype=np.int32, multimodal=True)
        self.record = {
            "format_version": SHARD_FORMAT_VERSION, "fingerprint": fingerprint, "rows": rows,
            "documents_written": 0, "documents_by_kind": {k.name.lower(): 0 for k in DocKind},
            "tokens": {"text": 0, "vision": 0}, "longest_document": 0, "skipped": [],
            "resized_to_fit": dict.fromkeys(RESIZE_KINDS, 0), "vision_layout": layout.record(),
        }

    def add(self, ids: np.ndarray, kind: DocKind, resized: str | None = None) -> None:
        """Append one document; `resized` names how it was made smaller to fit (RESIZE_KINDS), if it was."""
        ids = np.asarray(ids, dtype=np.int64)
        vision = int(is_vision_code(ids, self.layout).sum())
        self._builder.add_item(torch.from_numpy(ids.astype(np.int32)), mode=int(kind))
        self._builder.end_document()
        rec = self.record
        rec["documents_written"] += 1
        rec["documents_by_kind"][DocKind(kind).name.lower()] += 1
        rec["tokens"]["vision"] += vision
        rec["tokens"]["text"] += int(ids.size) - vision
        rec["longest_document"] = max(rec["longest_document"], int(ids.size))
        if resized is not None:
            rec["resized_to_fit"][resized] += 1

    def skip(self, entry: dict) -> None:
        self.record["skipped"].append(entry)

    def commit(self) -> dict:
        """Finalize the index, rename `.bin`, `.idx`, then the record; returns the record."""
        self._builder.finalize(f"{self._tmp}.idx")
        if self.record["documents_written"]:
            os.replace(f"{self._tmp}.bin", f"{self.prefix}.bin")
            os.replace(f"{self._tmp}.idx", f"{self.prefix}.idx")
        else:
            os.unlink(f"{self._tmp}.bin")
            os.unlink(f"{self._tmp}.idx")
        tmp_record = Path(f"{self._tmp}.json")
        tmp_record.write_text(json.dumps(self.record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp_record, record_path(self.prefix))
        return self.record
