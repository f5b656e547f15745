"""The preprocessing plan: the duplicate rule, on top of the shared work plan (`offline/plan.py`:
shards of `shard_size` rows, written to `{output_prefix}_{k:05d}.bin/.idx`, and the Slurm slice).

- Duplicate rule: a row whose (task, text, media) equals an earlier row's (manifests in the order
  given, then row order) is skipped and reported as a duplicate of that row; media compare by
  resolved path, or by the SHA-1 of the bytes in Parquet. `--keep-duplicates` turns this off.
"""

from __future__ import annotations

import hashlib

from megatron_emu3.preprocess.manifest import Manifest, Row


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
