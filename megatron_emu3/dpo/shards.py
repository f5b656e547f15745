"""Preference shards: (prompt, chosen, rejected) triplets stored as exact token sequences.

Format (``PREFIX.bin`` + ``PREFIX.idx`` + ``PREFIX.json``):
- a megatron-core `IndexedDataset` (int32, version 1, no modes) where record i is *document* i made
  of exactly three sequences: the prompt, the whole chosen sequence and the whole rejected sequence
  (both start with the prompt; the completion is what follows it);
- ``PREFIX.json``: ``{"format": "emu3-preferences", "version": 1, "records": N, "vocab_size": V,
  "longest": L}`` (the vocabulary the ids were checked against, the longest sequence).

Every record is checked when written and again when read (`PreferenceShard` validates all records
on open): ids inside the vocabulary, chosen and rejected both extending the prompt with a non-empty
completion, and differing. Errors name the file and the record and say what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

FORMAT = "emu3-preferences"
VERSION = 1


class PreferenceFormatError(ValueError):
    """A preference record or file that breaks the format (the message names file and record)."""


@dataclass(frozen=True)
class Preference:
    """One triplet; `chosen` and `rejected` are whole sequences starting with `prompt`."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray


def check_triplet(prompt, chosen, rejected, vocab_size: int, where: str) -> Preference:
    """The triplet as int64 arrays, or PreferenceFormatError saying what is wrong at `where`."""
    arrays = {}
    for name, seq in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        arr = np.asarray(seq, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            bad = int(np.flatnonzero((arr < 0) | (arr >= vocab_size))[0])
            raise PreferenceFormatError(f"{where}: {name} token {bad} is id {int(arr[bad])}, outside the vocabulary "
                                        f"[0, {vocab_size}); regenerate it with this model's tokenizer")
        arrays[name] = arr
    p = arrays["prompt"]
    if p.size == 0:
        raise PreferenceFormatError(f"{where}: the prompt is empty; a preference pair needs a shared prompt")
    for name in ("chosen", "rejected"):
        seq = arrays[name]
        shared = min(seq.size, p.size)
        differ = np.flatnonzero(seq[:shared] != p[:shared])
        if seq.size < p.size or differ.size:
            at = int(differ[0]) if differ.size else shared
            raise PreferenceFormatError(f"{where}: {name} does not start with the prompt (they differ at token {at}); "
                                        "chosen and rejected must both be whole sequences that extend the prompt")
        if seq.size == p.size:
            raise PreferenceFormatError(f"{where}: {name} has no completion after the {p.size}-token prompt")
    if np.array_equal(arrays["chosen"], arrays["rejected"]):
        raise PreferenceFormatError(f"{where}: chosen and rejected are identical; drop the record")
    return Preference(p, arrays["chosen"], arrays["rejected"])


def write_preferences(prefix: str | Path, triplets: Sequence, vocab_size: int) -> dict:
    """Check and write (prompt, chosen, rejected) triplets; returns the JSON sidecar's contents."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    checked = [check_triplet(*t, vocab_size=vocab_size, where=f"record {i}") for i, t in enumerate(triplets)]
    if not checked:
        raise PreferenceFormatError(f"{prefix}: no preference records to write")
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    for pref in checked:
        for seq in (pref.prompt, pref.chosen, pref.rejected):
            builder.add_item(torch.from_numpy(seq))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    meta = {"format": FORMAT, "version": VERSION, "records": len(checked), "vocab_size": int(vocab_size),
            "longest": int(max(max(p.chosen.size, p.rejected.size) for p in checked))}
    Path(f"{prefix}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class PreferenceShard:
    """Read a preference shard; every record is validated against `vocab_size` on open."""

    def __init__(self, prefix: str | Path, vocab_size: int):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix = str(prefix)
        for suffix in (".json", ".idx", ".bin"):
            if not Path(self.prefix + suffix).is_file():
                raise PreferenceFormatError(f"{self.prefix}{suffix} does not exist; write the set with "
                                            "tools/make_preferences.py (dpo.data is the prefix, without suffix)")
        try:
            meta = json.loads(Path(self.prefix + ".json").read_text())
        except json.JSONDecodeError as err:
            raise PreferenceFormatError(f"{self.prefix}.json is not JSON ({err}); rewrite the set") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise PreferenceFormatError(f"{self.prefix}.json says format {meta.get('format')!r} version "
                                        f"{meta.get('version')!r}, not {FORMAT!r} {VERSION}; is this a pretraining "
                                        "shard? write preferences with tools/make_preferences.py")
        try:
            self.data = IndexedDataset(self.prefix, multimodal=False)
        except (AssertionError, ValueError, OSError) as err:
            raise PreferenceFormatError(f"{self.prefix}.idx/.bin cannot be read as an IndexedDataset ({err!r}); "
                                        "rewrite the set with tools/make_preferences.py") from None
        docs = np.asarray(self.data.document_indices)
        if len(docs) - 1 != meta.get("records") or not np.all(np.diff(docs) == 3):
            raise PreferenceFormatError(f"{self.prefix}: every record must hold 3 sequences (prompt, chosen, "
                                        f"rejected) and {self.prefix}.json says {meta.get('records')} records; "
                                        "the files do not belong together, rewrite the set")
        self.vocab_size = vocab_size
        self.records = [self._read(i) for i in range(len(docs) - 1)]

    def _read(self, i: int) -> Preference:
        base = 3 * i
        seqs = [np.asarray(self.data[base + j], dtype=np.int64) for j in range(3)]
        return check_triplet(*seqs, vocab_size=self.vocab_size, where=f"{self.prefix} record {i}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Preference:
        return self.records[i]
