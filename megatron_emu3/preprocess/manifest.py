"""Manifests (JSONL or Parquet): opening with schema checks, row ranges, and row-level validation.

A row has `text` (the caption, or the whole document for text-only rows) and optionally `image` or
`video` (a path relative to the manifest's directory, an absolute path, or, in Parquet, the file's
bytes) and `task` = "generation" (default) | "understanding". Other keys are ignored.
An interleaved row (JSONL) has instead `segments`: an ordered list of one-key objects, `{"text": ...}`,
`{"image": PATH}` or `{"video": PATH}`, with at least one vision segment; it becomes one document.

Rows are numbered from 1 (the line number in JSONL, the 1-based row index in Parquet). Problems with
the whole manifest (missing, unreadable, wrong Parquet column types) raise `ManifestError`: the run
cannot start. Problems with one row become a `RowError`, which the row's worker reports as skipped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

TASKS = ("generation", "understanding")
MEDIA_FIELDS = ("image", "video")
SEGMENT_FIELDS = ("text", *MEDIA_FIELDS)


class ManifestError(ValueError):
    """A manifest the run cannot use at all (the message names it and says what to do)."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One validated row: caption text, at most one media reference, and the task."""

    manifest: str
    row: int
    text: str
    task: str = "generation"
    media_field: str | None = None  # "image" | "video" | None for a text-only row
    media: str | bytes | None = None  # a resolved path, or the bytes from Parquet
    segments: tuple[tuple[str, str], ...] | None = None  # interleaved rows: (field, text or resolved path)

    @property
    def media_label(self) -> str | None:
        """What to show for the media in reports: the path, or '<N bytes>'."""
        if isinstance(self.media, bytes):
            return f"<{len(self.media)} bytes in the manifest>"
        return self.media


@dataclasses.dataclass(frozen=True)
class RowError:
    """A row that cannot become a document, with the field at fault and a reason."""

    manifest: str
    row: int
    field: str | None
    reason: str
    path: str | None = None

    def as_dict(self) -> dict:
        return {"manifest": self.manifest, "row": self.row, "field": self.field, "path": self.path,
                "reason": self.reason}


def manifest_format(path: Path) -> str:
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson") or suffixes.endswith(".jsonl"):
        return "jsonl"
    if path.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    raise ManifestError(f"manifest {path}: unknown format '{path.suffix}'; use .jsonl or .parquet")


def _check_parquet_schema(path: Path, schema) -> None:
    import pyarrow as pa

    def ok_text(t):
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or \
            pa.types.is_large_binary(t) or pa.types.is_null(t)

    if "text" not in schema.names:
        raise ManifestError(f"manifest {path}: no 'text' column (columns: {schema.names}); every row needs a caption")
    for name in ("text", "image", "video", "task"):
        if name in schema.names and not ok_text(schema.field(name).type):
            kind = "a string path or binary bytes" if name in MEDIA_FIELDS else "a string"
            raise ManifestError(f"manifest {path}: column '{name}' has type {schema.field(name).type}; "
                                f"it must be {kind}")


class Manifest:
    """An opened manifest: its format, row count, and reading of row ranges."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.name = str(path)
        if not self.path.is_file():
            raise ManifestError(f"manifest {path} does not exist or is not a file")
        self.format = manifest_format(self.path)
        self.base_dir = self.path.parent
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                self._pq = pq.ParquetFile(self.path)
                _check_parquet_schema(self.path, self._pq.schema_arrow)
                self.columns = [c for c in ("text", "image", "video", "task") if c in self._pq.schema_arrow.names]
                self.num_rows = self._pq.metadata.num_rows
                self._line_offsets = None
            else:
                self._line_offsets = self._index_lines()
                self.num_rows = len(self._line_offsets)
        except ManifestError:
            raise
        except (OSError, ValueError) as err:
            raise ManifestError(f"manifest {path} cannot be read ({type(err).__name__}: {err})") from err
        stat = self.path.stat()
        self.identity = {"path": str(self.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _index_lines(self) -> list[int]:
        """Byte offset of every line (a row) of a JSONL manifest."""
        offsets, pos = [], 0
        with open(self.path, "rb") as f:
            for line in f:
                offsets.append(pos)
                pos += len(line)
        return offsets

    def raw_rows(self, start: int, stop: int) -> Iterator[tuple[int, dict | RowError]]:
        """(row number, raw record or RowError) for 0-based row indices [start, stop)."""
        if self.format == "jsonl":
            yield from self._jsonl_rows(start, stop)
        else:
            yield from self._parquet_rows(start, stop)

    def _jsonl_rows(self, start: int, stop: int):
        with open(self.path, "rb") as f:
            if start < len(self._line_offsets):
                f.seek(self._line_offsets[start])
            for index in range(start, stop):
                line, row = f.readline(), index + 1
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield row, RowError(self.name, row, None, f"the line is not valid UTF-8 (byte {err.start}); "
                                        "re-encode the manifest as UTF-8")
                    continue
                if not text.strip():
                    yield row, RowError(self.name, row, None, "blank line (no JSON object); remove it")
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as err:
                    yield row, RowError(self.name, row, None, f"not valid JSON ({err.msg} at column {err.colno})")
                    continue
                if not isinstance(record, dict):
                    yield row, RowError(self.name, row, None,
                                        f"a row must be a JSON object, got {type(record).__name__}")
                    continue
                yield row, record

    def _parquet_rows(self, start: int, stop: int):
        meta = self._pq.metadata
        first = 0
        for group in range(meta.num_row_groups):
            count = meta.row_group(group).num_rows
            lo, hi = max(start, first), min(stop, first + count)
            if lo < hi:
                table = self._pq.read_row_group(group, columns=self.columns).slice(lo - first, hi - lo)
                columns = {name: table.column(name).to_pylist() for name in self.columns}
                for i in range(hi - lo):
                    yield lo + i + 1, {name: values[i] for name, values in columns.items()}
            first += count
            if first >= stop:
                break

    def validate(self, row: int, record: dict) -> Row | RowError:
        """A raw record -> a Row, or a RowError naming the field and the fix."""
        def error(field, reason, path=None):
            return RowError(self.name, row, field, reason, path)

        if record.get("segments") is not None:
            return self._validate_segments(row, record["segments"], error)
        text = record.get("text")
        if text is None:
            return error("text", "caption is missing or null; every row needs a non-empty 'text'")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as err:
                return error("text", f"caption is not valid UTF-8 (byte {err.start}); re-encode it")
        if not isinstance(text, str):
            return error("text", f"caption must be a string, got {type(text).__name__} ({str(text)[:40]!r})")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return error("text", "caption is not valid UTF-8 (it holds a lone surrogate escape); fix the text")
        if not text.strip():
            return error("text", "caption is empty (only whitespace); give a caption or drop the row")
        task = record.get("task")
        if task is None:
            task = "generation"
        if task not in TASKS:
            return error("task", f"task is {task!r}; it must be one of {TASKS} (default: generation)")
        present = [f for f in MEDIA_FIELDS if record.get(f) is not None]
        if len(present) > 1:
            return error("image,video", "row has both 'image' and 'video'; a document holds one vision block; "
                         "split it into two rows")
        if not present:
            return Row(self.name, row, text, task)
        field = present[0]
        media = record[field]
        if isinstance(media, str):
            if not media.strip():
                return error(field, f"'{field}' is an empty path")
            media = str((self.base_dir / media).resolve())
        elif not isinstance(media, bytes):
            return error(field, f"'{field}' must be a path string (or bytes in Parquet), got {type(media).__name__}")
        elif not media:
            return error(field, f"'{field}' holds 0 bytes", "<0 bytes in the manifest>")
        return Row(self.name, row, text, task, field, media)

    def _validate_segments(self, row: int, segments, error) -> Row | RowError:
        """An interleaved row: every segment one of text / image / video, at least one vision segment."""
        if not isinstance(segments, list) or not segments:
            return error("segments", "'segments' must be a non-empty list of {\"text\"|\"image\"|\"video\": ...}")
        out = []
        for i, seg in enumerate(segments):
            name = f"segments[{i}]"
            if not isinstance(seg, dict) or len(seg) != 1 or next(iter(seg)) not in SEGMENT_FIELDS:
                return error(name, f"a segment is one object with exactly one key of {SEGMENT_FIELDS}, got {seg!r:.80}")
            field, value = next(iter(seg.items()))
            if not isinstance(value, str) or not value.strip():
                return error(f"{name}.{field}", f"'{field}' must be a non-empty string, got {value!r:.40}")
            if field == "text":
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return error(f"{name}.text", "text is not valid UTF-8 (a lone surrogate escape); fix the text")
            else:
                value = str((self.base_dir / value).resolve())
            out.append((field, value))
        if not any(f != "text" for f, _ in out):
            return error("segments", "no image or video segment; a text-only document is a plain {\"text\": ...} row")
        text = "\n".join(v for f, v in out if f == "text")
        return Row(self.name, row, text, "generation", segments=tuple(out))

    def rows(self, start: int, stop: int) -> Iterator[Row | RowError]:
        """Validated rows for 0-based row indices [start, stop)."""
        for row, record in self.raw_rows(start, stop):
            yield record if isinstance(record, RowError) else self.validate(row, record)
