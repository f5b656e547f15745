"""One worker: turns the rows of a shard into documents (tokenize, load media, VQ, format, write).

Rows are read in windows of `batch_size`; each window's images are encoded batched by resolution
(videos by clip shape) and its documents are written in row order, so a shard's bytes do not depend
on batching. Every row that does not become a document is recorded in the shard's `skipped` list
with its manifest, row, field, path and reason: nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from typing import Callable

import numpy as np

from megatron_emu3.data import documents, media
from megatron_emu3.data.tokens import DocKind
from megatron_emu3.preprocess.manifest import Manifest, Row, RowError
from megatron_emu3.offline.plan import ShardSpec
from megatron_emu3.preprocess.shards import ShardWriter, shard_prefix

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides the shards' content (it is fingerprinted) plus how to run."""

    output_prefix: str
    vq_dir: str | None
    tokenizer_dir: str | None = None
    min_pixels: int = media.DEFAULT_MIN_PIXELS
    max_pixels: int = media.DEFAULT_MAX_PIXELS
    video_fps: float = 8.0
    video_max_seconds: float = 4.0
    video_min_pixels: int = 128 * 128
    video_max_pixels: int = 512 * 512
    max_seq_len: int = 5120
    shard_size: int = 1000
    keep_duplicates: bool = False
    max_image_pixels: int | None = None
    # Not part of the content:
    batch_size: int = 16
    threads: int | None = None
    debug_crash: int | None = None  # tests: the worker writing this shard exits hard mid-shard

    def content(self) -> dict:
        skip = {"batch_size", "threads", "debug_crash", "output_prefix"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclasses.dataclass
class Prepared:
    """A row ready for the VQ (or already a finished document)."""

    row: Row
    kind: DocKind
    text_ids: list[int]
    pixels: np.ndarray | None = None  # (3, H, W) or (T, 3, H, W)
    fps: float | None = None
    codes: np.ndarray | None = None
    doc: np.ndarray | None = None


def skip_entry(row: Row | RowError, field: str | None, reason: str, path: str | None = None) -> dict:
    if isinstance(row, RowError):
        return row.as_dict()
    return {"manifest": row.manifest, "row": row.row, "field": field, "path": path, "reason": reason}


class Worker:
    """Holds the tokenizers of one worker process (the VQ is loaded on first use) and writes shards."""

    def __init__(self, settings: Settings, worker_id: int = 0, device: str = "cpu"):
        from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer

        self.settings, self.worker_id, self.device = settings, worker_id, device
        self.text = (Emu3TextTokenizer.from_dir(settings.tokenizer_dir) if settings.tokenizer_dir
                     else Emu3TextTokenizer.from_default())
        self._vq = None
        self.rows_done = 0
        if settings.max_image_pixels is not None:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = settings.max_image_pixels

    @property
    def vq(self):
        if self._vq is None:
            from megatron_emu3.data.vision_tokenizer import Emu3VisionTokenizer

            self._vq = Emu3VisionTokenizer.from_dir(self.settings.vq_dir, device=self.device)
        return self._vq

    # -- one row -------------------------------------------------------------------------------
    def prepare(self, item: Row | RowError, duplicate_of: tuple[str, int] | None) -> Prepared | dict:
        if isinstance(item, RowError):
            return item.as_dict()
        if duplicate_of is not None:
            return skip_entry(item, None, f"duplicate of {duplicate_of[0]} row {duplicate_of[1]} (same task, text "
                              "and media; the first is kept; --keep-duplicates keeps both)", item.media_label)
        s = self.settings
        text_ids = self.text.encode(item.text)
        if item.media_field is None:
            return Prepared(item, DocKind.TEXT, text_ids, doc=documents.format_text(text_ids))
        if s.vq_dir is None:
            return skip_entry(item, item.media_field, "this run has no --vq-dir; pass the vision tokenizer "
                              "directory to tokenize images and videos", item.media_label)
        understanding = item.task == "understanding"
        try:
            if item.media_field == "image":
                pixels = media.prepare_image(item.media, s.min_pixels, s.max_pixels)
                kind = DocKind.IMAGE_UNDERSTANDING if understanding else DocKind.IMAGE_GENERATION
                grid, meta = (1, *[d // 8 for d in pixels.shape[-2:]]), documents.VisionMeta(
                    pixels.shape[-2] // 8, pixels.shape[-1] // 8)
                fps = None
            else:
                frames, fps = media.decode_video(item.media, s.video_fps, s.video_max_seconds,
                                                 s.video_min_pixels, s.video_max_pixels)
                pixels = media.to_pixel_values(frames)
                kind = DocKind.VIDEO_UNDERSTANDING if understanding else DocKind.VIDEO_GENERATION
                t, h, w = frames.shape[0] // 4, frames.shape[1] // 8, frames.shape[2] // 8
                grid = (t, h, w)
                meta = documents.VisionMeta(h, w, t, fps, round(t * 4 / fps, 2))
        except media.MediaError as err:
            return skip_entry(item, item.media_field, str(err), item.media_label)
        length = documents.vision_document_length(len(text_ids), len(self.text.encode(meta.text())), *grid)
        if length > s.max_seq_len:
            return skip_entry(item, item.media_field, (
                f"the document would have {length} tokens, more than --max-seq-len {s.max_seq_len} (never truncated); "
                "lower --max-pixels / --video-max-pixels / --video-max-seconds or raise --max-seq-len"),
                item.media_label)
        return Prepared(item, kind, text_ids, pixels=pixels, fps=fps)

    # -- the VQ over a window ------------------------------------------------------------------
    def _encode_group(self, items: list[Prepared], video: bool) -> None:
        """Codes for same-shaped items; on failure (e.g. out of memory) retry one by one."""
        encode = self.vq.encode_videos if video else self.vq.encode_images
        try:
            codes = encode(np.stack([p.pixels for p in items]))
            for p, c in zip(items, codes):
                p.codes = c
            return
        except Exception as err:  # noqa: BLE001 - any VQ failure must only cost the items it hits
            if len(items) == 1:
                self._release_memory()
                items[0].codes = f"the vision tokenizer failed on this item ({type(err).__name__}: {err})"
                return
            log.warning("worker %d: VQ batch of %d failed (%s); retrying one by one", self.worker_id, len(items), err)
            self._release_memory()
        for p in items:
            self._encode_group([p], video)

    def _release_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def encode_window(self, window: list[Prepared | dict]) -> None:
        groups: dict[tuple, list[Prepared]] = defaultdict(list)
        for p in window:
            if isinstance(p, Prepared) and p.doc is None:
                groups[(p.pixels.ndim == 4, p.pixels.shape)].append(p)
        for (video, _), items in groups.items():
            for start in range(0, len(items), self.settings.batch_size):
                self._encode_group(items[start:start + self.settings.batch_size], video)
        for p in window:
            if isinstance(p, Prepared) and p.doc is None and isinstance(p.codes, np.ndarray):
                meta = documents.VisionMeta(*p.codes.shape[-2:]) if p.fps is None else documents.VisionMeta(
                    p.codes.shape[1], p.codes.shape[2], p.codes.shape[0], p.fps, round(p.codes.shape[0] * 4 / p.fps, 2))
                p.doc = documents.format_vision(p.kind, p.text_ids, p.codes, meta, self.text)

    # -- one shard -----------------------------------------------------------------------------
    def process_shard(self, spec: ShardSpec, manifest: Manifest, duplicates: dict, fingerprint: str,
                      progress: Callable[[int], None] = lambda n: None) -> dict:
        writer = ShardWriter(shard_prefix(self.settings.output_prefix, spec.index), fingerprint, spec.num_rows)
        window: list[Prepared | dict] = []

        def flush():
            self.encode_window(window)
            for p in window:
                if isinstance(p, dict):
                    writer.skip(p)
                elif p.doc is None:
                    writer.skip(skip_entry(p.row, p.row.media_field, p.codes, p.row.media_label))
                else:
                    writer.add(p.doc, p.kind)
            self.rows_done += len(window)
            progress(len(window))
            if self.settings.debug_crash == spec.index:
                os._exit(86)  # simulates a worker killed mid-shard (tests of resume / crash isolation)
            window.clear()

        for item in manifest.rows(spec.start, spec.stop):
            window.append(self.prepare(item, duplicates.get((spec.manifest_index, item.row))))
            if len(window) >= self.settings.batch_size:
                flush()
        flush()
        return writer.commit()
