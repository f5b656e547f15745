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
from megatron_emu3.data.tokens import EMU3_VISION, DocKind, VisionLayout
from megatron_emu3.preprocess import fit
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
    min_pixels: int = fit.STAGES[fit.DEFAULT_STAGE]["min_pixels"]
    max_pixels: int = fit.STAGES[fit.DEFAULT_STAGE]["max_pixels"]
    video_fps: float = 8.0
    video_max_seconds: float = 4.0
    video_min_pixels: int = 128 * 128
    video_max_pixels: int = 512 * 512
    max_seq_len: int = fit.STAGES[fit.DEFAULT_STAGE]["max_seq_len"]
    fit_to_context: bool = True
    """Shrink a vision document that would exceed max_seq_len (preprocess/fit.py) instead of skipping it."""
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
    resized: str | None = None  # "image" | "video" | "video_shortened": made smaller to fit max_seq_len


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
            from megatron_emu3.data.vision_tokenizer import load_vision_tokenizer

            self._vq = load_vision_tokenizer(self.settings.vq_dir, device=self.device)
        return self._vq

    @property
    def layout(self) -> VisionLayout:
        """The id layout of the vision tokenizer (Emu3's when the run has none)."""
        return EMU3_VISION if self.settings.vq_dir is None else self.vq.layout

    # -- one row -------------------------------------------------------------------------------
    def prepare(self, item: Row | RowError, duplicate_of: tuple[str, int] | None) -> Prepared | dict:
        if isinstance(item, RowError):
            return item.as_dict()
        if duplicate_of is not None:
            return skip_entry(item, None, f"duplicate of {duplicate_of[0]} row {duplicate_of[1]} (same task, text "
                              "and media; the first is kept; --keep-duplicates keeps both)", item.media_label)
        s = self.settings
        if item.segments is not None:
            return self._prepare_interleaved(item)
        text_ids = self.text.encode(item.text)
        if item.media_field is None:
            return Prepared(item, DocKind.TEXT, text_ids, doc=documents.format_text(text_ids))
        if s.vq_dir is None:
            return skip_entry(item, item.media_field, "this run has no --vq-dir; pass the vision tokenizer "
                              "directory to tokenize images and videos", item.media_label)
        understanding = item.task == "understanding"
        try:
            if item.media_field == "image":
                prepared = self._prepare_image(item, text_ids, understanding)
            else:
                prepared = self._prepare_video(item, text_ids, understanding)
        except media.MediaError as err:
            return skip_entry(item, item.media_field, str(err), item.media_label)
        if prepared is None:
            image = item.media_field == "image"
            floor = "--min-pixels" if image else "--video-min-pixels and one latent frame"
            why = (f"even at the minimum area ({floor})" if s.fit_to_context
                   else "at the area range (--no-fit-to-context)")
            return skip_entry(item, item.media_field, (
                f"the document does not fit --max-seq-len {s.max_seq_len} {why}; never truncated: shorten the "
                "caption, lower the minimum area or raise --max-seq-len"), item.media_label)
        return prepared

    def _prepare_interleaved(self, item: Row) -> Prepared | dict:
        """A `segments` row: every segment read in order, the pictures / clips sized by their area ranges
        and, if the document would exceed --max-seq-len, all shrunk by one common factor (fit.fit_interleaved),
        then encoded one by one into one document. Any bad segment skips the row naming it."""
        s, layout = self.settings, self.layout
        if s.vq_dir is None:
            return skip_entry(item, "segments", "this run has no --vq-dir; pass the vision tokenizer directory "
                              "to tokenize interleaved documents")
        loaded = []  # (field, text ids | PIL image | (clip, fps), name, value)
        for i, (field, value) in enumerate(item.segments):
            name = f"segments[{i}].{field}"
            try:
                if field == "text":
                    loaded.append((field, self.text.encode(value), name, value))
                elif field == "image":
                    loaded.append((field, media.load_image(value, min_side=layout.spatial_factor), name, value))
                else:
                    loaded.append((field, media.read_video(value, s.video_fps, s.video_max_seconds,
                                                           multiple=layout.temporal_factor), name, value))
            except media.MediaError as err:
                return skip_entry(item, name, str(err), value)
        vision = [(f, x) for f, x, _, _ in loaded if f != "text"]
        ranges = [(x.height, x.width, s.min_pixels, s.max_pixels) if f == "image" else
                  (x[0].shape[1], x[0].shape[2], s.video_min_pixels, s.video_max_pixels) for f, x in vision]
        text_len = sum(len(x) for f, x, _, _ in loaded if f == "text")

        def metas(pixel_sizes) -> list[documents.VisionMeta]:
            f_ = layout.spatial_factor
            return [documents.VisionMeta(h // f_, w // f_) if f == "image" else
                    documents.video_meta(x[0].shape[0] // layout.temporal_factor, h // f_, w // f_, x[1], layout)
                    for (f, x), (h, w) in zip(vision, pixel_sizes)]

        def length(pixel_sizes) -> int:
            blocks = [documents.vision_block_length(len(self.text.encode(m.text())), m.frames or 1, m.height, m.width)
                      for m in metas(pixel_sizes)]
            return documents.interleaved_length([text_len, *blocks])

        fitted = fit.fit_interleaved(ranges, length, s.max_seq_len, layout.spatial_factor, s.fit_to_context)
        if fitted is None:
            return skip_entry(item, "segments", (
                f"the interleaved document does not fit --max-seq-len {s.max_seq_len} even with every picture and "
                "clip at its minimum area (never truncated): split the row or raise --max-seq-len"))
        pixel_sizes, resized = fitted
        segments, at = [], 0
        for field, x, name, value in loaded:
            if field == "text":
                segments.append(documents.Segment(text_ids=np.asarray(x, dtype=np.int64)))
                continue
            (h, w), meta = pixel_sizes[at], metas(pixel_sizes)[at]
            at += 1
            try:
                if field == "image":
                    codes = self.vq.encode_images(media.to_pixel_values(np.asarray(media.resize_to(x, h, w)))[None])[0]
                else:
                    codes = self.vq.encode_videos(media.to_pixel_values(media.resize_frames(x[0], h, w))[None])[0]
            except Exception as err:  # noqa: BLE001 - a VQ failure costs only this row
                self._release_memory()
                return skip_entry(item, name, f"the vision tokenizer failed on this segment ({type(err).__name__}: "
                                  f"{err})", value)
            segments.append(documents.Segment(meta=meta, codes=codes))
        return Prepared(item, DocKind.INTERLEAVED, [], doc=documents.format_interleaved(segments, self.text, layout),
                        resized="interleaved" if resized else None)

    def _doc_length(self, text_ids: list[int], meta: documents.VisionMeta) -> int:
        return documents.vision_document_length(len(text_ids), len(self.text.encode(meta.text())),
                                                meta.frames or 1, meta.height, meta.width)

    def _prepare_image(self, item: Row, text_ids: list[int], understanding: bool) -> Prepared | None:
        s, factor = self.settings, self.layout.spatial_factor
        img = media.load_image(item.media, min_side=factor)
        size = fit.fit_image(img.height, img.width, lambda h, w: self._doc_length(text_ids, documents.VisionMeta(h, w)),
                             s.max_seq_len, s.min_pixels, s.max_pixels, factor, s.fit_to_context)
        if size is None:
            return None
        pixels = media.to_pixel_values(np.asarray(media.resize_to(img, size.height, size.width)))
        kind = DocKind.IMAGE_UNDERSTANDING if understanding else DocKind.IMAGE_GENERATION
        return Prepared(item, kind, text_ids, pixels=pixels, resized="image" if size.resized else None)

    def _prepare_video(self, item: Row, text_ids: list[int], understanding: bool) -> Prepared | None:
        s, layout = self.settings, self.layout
        factor, temporal = layout.spatial_factor, layout.temporal_factor
        clip, fps = media.read_video(item.media, s.video_fps, s.video_max_seconds, multiple=temporal)

        def length(t: int, h: int, w: int) -> int:
            return self._doc_length(text_ids, documents.video_meta(t, h, w, fps, layout))

        size = fit.fit_video(clip.shape[0], clip.shape[1], clip.shape[2], length, s.max_seq_len,
                             s.video_min_pixels, s.video_max_pixels, factor, temporal, s.fit_to_context)
        if size is None:
            return None
        pixels = media.to_pixel_values(media.resize_frames(clip[:size.frames], size.height, size.width))
        kind = DocKind.VIDEO_UNDERSTANDING if understanding else DocKind.VIDEO_GENERATION
        resized = ("video_shortened" if size.shortened else "video") if size.resized else None
        return Prepared(item, kind, text_ids, pixels=pixels, fps=fps, resized=resized)

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
                meta = documents.VisionMeta(*p.codes.shape[-2:]) if p.fps is None else documents.video_meta(
                    *p.codes.shape, p.fps, self.layout)
                p.doc = documents.format_vision(p.kind, p.text_ids, p.codes, meta, self.text, self.layout)

    # -- one shard -----------------------------------------------------------------------------
    def process_shard(self, spec: ShardSpec, manifest: Manifest, duplicates: dict, fingerprint: str,
                      progress: Callable[[int], None] = lambda n: None) -> dict:
        writer = ShardWriter(shard_prefix(self.settings.output_prefix, spec.index), fingerprint, spec.num_rows,
                             self.layout)
        window: list[Prepared | dict] = []

        def flush():
            self.encode_window(window)
            for p in window:
                if isinstance(p, dict):
                    writer.skip(p)
                elif p.doc is None:
                    writer.skip(skip_entry(p.row, p.row.media_field, p.codes, p.row.media_label))
                else:
                    writer.add(p.doc, p.kind, p.resized)
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
