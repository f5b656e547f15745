"""Reading and checking preprocessed shard sets (megatron-core IndexedDataset, ``.bin`` + ``.idx``).

An Emu3 shard set holds int32 tokens, one item per document, and the document kind (`DocKind`) in
the per-item ``modes`` (written with ``IndexedDatasetBuilder(..., dtype=numpy.int32, multimodal=True)``).
`ShardSet` reads the ``.idx`` itself (the layout of megatron-core 0.16: magic, version 1, dtype code,
counts, lengths int32, pointers int64, document indices int64, modes int8) so every problem becomes
an error that names the file and says what to do, instead of an ``assert`` deep in a worker.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import struct

import numpy as np

from megatron_emu3.data.tokens import VOCAB_SIZE, DocKind, VisionLayout

MAGIC = b"MMIDIDX\x00\x00"
INT32_CODE = 4
_DTYPE_NAMES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float64", 7: "float32", 8: "uint16"}
_HEADER = 9 + 8 + 1 + 8 + 8
_REDO = "re-run tools/preprocess_data.py for this shard (it skips complete shards)"


def expand_prefixes(prefixes) -> list[str]:
    """Shard prefixes with globs expanded (``data/img/shard_*`` matches every ``shard_*.idx``)."""
    out = []
    for prefix in [prefixes] if isinstance(prefixes, str) else prefixes:
        prefix = os.fspath(prefix)
        if any(c in prefix for c in "*?["):
            matches = sorted(m[:-4] for m in glob.glob(prefix + ".idx"))
            if not matches:
                raise FileNotFoundError(f"shard prefix pattern {prefix!r} matches no '.idx' file; check the path")
            out.extend(matches)
        else:
            out.append(prefix[:-4] if prefix.endswith((".idx", ".bin")) else prefix)
    return out


def read_layout(prefix: str) -> VisionLayout:
    """The vision tokenizer and id layout a shard was written with, from its record ``PREFIX.json``
    (written by tools/preprocess_data.py); shards without a record, or written before records named
    the layout, hold Emu3's ids."""
    record = prefix + ".json"
    if not os.path.isfile(record):
        return VisionLayout.from_record(None)
    try:
        data = json.loads(open(record, encoding="utf-8").read())
        return VisionLayout.from_record(data.get("vision_layout"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{record}: unreadable shard record ({err}); re-run tools/preprocess_data.py") from err


def common_layout(named: list[tuple[str, VisionLayout]]) -> VisionLayout:
    """The one layout of several shards; ValueError naming two shards whose token ids differ."""
    first_name, first = named[0]
    for name, layout in named[1:]:
        if layout.ids() != first.ids():
            raise ValueError(
                f"cannot blend shards written with different vision token layouts: {first_name} has "
                f"{first.describe()}; {name} has {layout.describe()}. Their token ids mean different things: "
                "preprocess every source with the same vision tokenizer (--vq-dir)")
    return first


def require_shard_files(prefix: str, where: str = "") -> None:
    """FileNotFoundError naming what is missing of ``PREFIX.idx`` / ``PREFIX.bin`` (`where`: e.g.
    " of data.sources", after the prefix in the message)."""
    missing = [p for p in (prefix + ".idx", prefix + ".bin") if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"shard {prefix!r}{where} is missing {', '.join(missing)}; check the data source path or "
            f"{_REDO if len(missing) == 1 else 'run tools/preprocess_data.py'}"
        )


class ShardSet:
    """One ``PREFIX.bin`` / ``PREFIX.idx`` pair, checked on open; tokens read through a memory map."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        idx_path, bin_path = prefix + ".idx", prefix + ".bin"
        require_shard_files(prefix)
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            head = f.read(_HEADER)
        if len(head) < _HEADER or head[:9] != MAGIC:
            raise ValueError(f"{idx_path} is not a megatron-core index (bad or short header); {_REDO}")
        version, code, n, n_doc_idx = struct.unpack("<QBQQ", head[9:])
        if version != 1:
            raise ValueError(f"{idx_path} has index version {version}; only version 1 is supported")
        if code != INT32_CODE:
            raise ValueError(
                f"{idx_path} stores tokens as {_DTYPE_NAMES.get(code, f'code {code}')}; Emu3 shards must be "
                f"int32 (ids reach {VOCAB_SIZE - 1}): re-run tools/preprocess_data.py for these inputs"
            )
        plain = _HEADER + n * 4 + n * 8 + n_doc_idx * 8
        if idx_size == plain and n > 0:
            raise ValueError(f"{idx_path} has no per-document kinds (written with multimodal=False); "
                             "Emu3 shards carry the DocKind in the modes: re-run tools/preprocess_data.py")
        if idx_size != plain + n:
            raise ValueError(f"{idx_path} is incomplete or corrupt ({idx_size} bytes, expected {plain + n} "
                             f"for {n} documents); {_REDO}")
        idx = np.memmap(idx_path, mode="r", dtype=np.uint8)
        self.lengths = np.frombuffer(idx, np.int32, n, _HEADER)
        self.pointers = np.frombuffer(idx, np.int64, n, _HEADER + 4 * n)
        doc_index = np.frombuffer(idx, np.int64, n_doc_idx, _HEADER + 12 * n)
        self.kinds = np.frombuffer(idx, np.int8, n, _HEADER + 12 * n + 8 * n_doc_idx)
        if n_doc_idx != n + 1 or np.any(doc_index != np.arange(n + 1)):
            raise ValueError(f"{idx_path} groups several items per document; Emu3 shards hold one item per "
                             f"document (end_document() after every add_item): {_REDO}")
        if n and self.lengths.min() < 1:
            raise ValueError(f"{idx_path}: document {int(np.argmin(self.lengths))} is empty; {_REDO}")
        bad = (self.kinds < 0) | (self.kinds >= len(DocKind))
        if np.any(bad):
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{idx_path}: document {first} has kind {int(self.kinds[first])}, not a DocKind "
                             f"(0..{len(DocKind) - 1}); {_REDO}")
        expected_bin = int(self.lengths.sum(dtype=np.int64)) * 4
        bin_size = os.path.getsize(bin_path)
        if bin_size != expected_bin:
            raise ValueError(f"{bin_path} is incomplete or corrupt ({bin_size} bytes, the index says "
                             f"{expected_bin}); {_REDO}")
        self.tokens = np.memmap(bin_path, mode="r", dtype=np.int32) if n else np.zeros(0, np.int32)
        self.idx_size, self.bin_size = idx_size, bin_size
        self.layout = read_layout(prefix)
        self.vocab_size = self.layout.vocab_size

    def __len__(self) -> int:
        return len(self.lengths)

    def __reduce__(self):
        # reopen by name in another process (DataLoader workers under spawn) instead of pickling the maps
        return (ShardSet, (self.prefix,))

    def read(self, doc: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[start, start + length)`` of document `doc` (int32 view of the memory map)."""
        first = int(self.pointers[doc]) // 4 + int(start)
        length = int(self.lengths[doc]) - int(start) if length is None else int(length)
        return self.tokens[first:first + length]

    def check_tokens(self, doc: int, tokens: np.ndarray) -> None:
        """ValueError naming shard and document when a token id is outside the shard's vocabulary."""
        vocab = self.vocab_size
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab):
            bad = tokens[(tokens < 0) | (tokens >= vocab)][0]
            raise ValueError(
                f"{self.prefix}: document {doc} holds token id {int(bad)}, outside the Emu3 vocabulary [0, {vocab}) "
                f"of {self.layout.describe()}; the shard was written with another tokenizer: re-run preprocessing"
            )

    def spot_check(self, count: int = 16, seed: int = 0) -> None:
        """Check the ids of the first, last and `count` random documents (cheap, at open time)."""
        if not len(self):
            return
        picks = {0, len(self) - 1, *np.random.default_rng(seed).integers(0, len(self), count).tolist()}
        for doc in sorted(picks):
            self.check_tokens(doc, self.read(doc))

    def fingerprint(self) -> list:
        """What the index cache key records about this shard set: path, sizes and a hash of the index
        (its first and last 4 MiB: document lengths and kinds), so a re-preprocessed shard is a new key."""
        digest = hashlib.sha1()
        with open(self.prefix + ".idx", "rb") as f:
            digest.update(f.read(4 << 20))
            if self.idx_size > 8 << 20:
                f.seek(-(4 << 20), os.SEEK_END)
            digest.update(f.read(4 << 20))
        return [os.path.abspath(self.prefix), self.idx_size, self.bin_size, len(self), digest.hexdigest()]
