"""One worker: runs the rules over the rows of a shard and writes the shard's decisions.

Every row becomes one or more decisions, in row order: kept (the row for the kept manifest, its
scores as extra fields) or dropped (the rule, the measured value, the reason). A video becomes one
decision per scene clip. Rules run cheapest first and a row stops at the first rule it fails, so a
dropped row carries the scores measured up to that rule. Rows that cannot be read are dropped with
rule `input.*` and the same reasons preprocessing gives (`data/media.py`, `preprocess/manifest.py`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from megatron_emu3.curate import image_rules
from megatron_emu3.curate.dedup import phash
from megatron_emu3.curate.motion import check_motion, motion_scores
from megatron_emu3.curate.rules import Rules, frames_for_length
from megatron_emu3.curate.scenes import detect_scenes, write_clip
from megatron_emu3.curate.shards import ShardWriter
from megatron_emu3.curate.video import even_times, grid_times, probe, sample_frames
from megatron_emu3.data import media
from megatron_emu3.offline.plan import ShardSpec
from megatron_emu3.preprocess.manifest import Manifest, Row, RowError


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where outputs go and how to run (the rules are separate and fingerprinted)."""

    output_prefix: str
    shard_size: int = 100
    threads: int | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.output_prefix).resolve().parent

    @property
    def clip_dir(self) -> Path:
        return Path(f"{Path(self.output_prefix).resolve()}_clips")

    @property
    def media_dir(self) -> Path:
        return Path(f"{Path(self.output_prefix).resolve()}_media")


class Dropped(Exception):
    """A rule dropped the row (or clip): rule name, measured value, reason."""

    def __init__(self, rule: str, value, reason: str):
        super().__init__(reason)
        self.rule, self.value, self.reason = rule, value, reason


class Curator:
    """Holds one worker's models (OCR and aesthetics load on first use) and curates shards."""

    def __init__(self, rules: Rules, settings: Settings, device: str = "cpu"):
        self.rules, self.settings, self.device = rules, settings, device
        self._ocr = self._aesthetics = None
        self.timings: dict[str, float] = defaultdict(float)

    # -- models --------------------------------------------------------------------------------
    @property
    def ocr(self):
        if self._ocr is None:
            from megatron_emu3.curate.ocr import TextAreaDetector

            self._ocr = TextAreaDetector(self.rules.models.ocr_det_model, threads=self.settings.threads or 1)
        return self._ocr

    @property
    def aesthetics(self):
        if self._aesthetics is None:
            from megatron_emu3.curate.aesthetics import AestheticScorer

            self._aesthetics = AestheticScorer(self.rules.models.clip_dir, self.rules.models.aesthetic_mlp, self.device)
        return self._aesthetics

    def _timed(self, name: str, fn: Callable, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timings[name] += time.perf_counter() - start

    # -- one image -----------------------------------------------------------------------------
    def curate_image(self, source, scores: dict) -> None:
        r = self.rules.image
        img = self._timed("decode", media.load_image, source)
        scores["width"], scores["height"] = img.width, img.height
        if failure := image_rules.check_size(r.size, img.width, img.height):
            raise Dropped(*failure)
        if r.colour.enabled:
            scores.update(self._timed("colour", lambda: image_rules.colour_scores(image_rules.thumbnail(img))))
            if failure := image_rules.check_colour(r.colour, scores):
                raise Dropped(*failure)
        if r.ocr.enabled:
            scores["text_area"] = self._timed("ocr", self.ocr.text_area, image_rules.thumbnail(img, 1024))
            if scores["text_area"] > r.ocr.max_text_area:
                raise Dropped("image.ocr", scores["text_area"],
                              f"text covers {scores['text_area']:.1%} of the picture (> {r.ocr.max_text_area:.0%})")
        if r.aesthetics.enabled and self.rules.aesthetics_available():
            scores["aesthetic"] = self._timed("aesthetics", self.aesthetics.scores, [np.asarray(img)])[0]
            if scores["aesthetic"] < r.aesthetics.min_score:
                raise Dropped("image.aesthetics", scores["aesthetic"],
                              f"aesthetic score {scores['aesthetic']} < {r.aesthetics.min_score}")
        if r.dedup.enabled:
            scores["phash"] = self._timed("dedup", phash, img)

    # -- one clip ------------------------------------------------------------------------------
    def curate_clip(self, path: Path, seconds: float, scores: dict, sampling: dict) -> None:
        r = self.rules.video
        if r.motion.enabled:
            frames = self._timed("decode", sample_frames, path, grid_times(seconds, r.motion.fps), r.motion.short_side)
            scores.update(self._timed("motion", motion_scores, frames, r.motion.fps))
            if failure := check_motion(r.motion, scores):
                raise Dropped(*failure)
        want_ocr, want_aes = r.ocr.enabled, r.aesthetics.enabled and self.rules.aesthetics_available()
        if not (want_ocr or want_aes):
            return
        frames = self._timed("decode", sample_frames, path, sampling["sample_times"])
        if want_ocr:
            scores["text_area"] = max(self._timed("ocr", self.ocr.text_area, f) for f in frames)
            if scores["text_area"] > r.ocr.max_text_area:
                raise Dropped("video.ocr", scores["text_area"], f"text covers {scores['text_area']:.1%} of a "
                              f"sampled frame (> {r.ocr.max_text_area:.0%})")
        if want_aes:
            scores["aesthetic"] = round(float(np.mean(self._timed("aesthetics", self.aesthetics.scores, frames))), 4)
            if scores["aesthetic"] < r.aesthetics.min_score:
                raise Dropped("video.aesthetics", scores["aesthetic"],
                              f"mean aesthetic score of the sampled frames {scores['aesthetic']} < {r.aesthetics.min_score}")

    def curate_video(self, row: Row, source: Path, base: dict, emit: Callable[[dict], None], spec: ShardSpec) -> None:
        r = self.rules.video
        info = self._timed("decode", probe, source)
        spans = self._timed("scenes", detect_scenes, source, r.scenes, info)
        for k, (start, end) in enumerate(spans):
            seconds = round(end - start, 6)
            count = frames_for_length(r.sampling, seconds)
            clip = {"index": k, "of": len(spans), "start": round(start, 3), "end": round(end, 3), "seconds": round(seconds, 3),
                    "source": str(source)}
            sampling = {"sample_frames": count, "sample_times": even_times(seconds, count)}
            scores: dict = {}
            path = source
            try:
                if r.length.enabled and seconds < r.length.min_seconds:
                    raise Dropped("video.length.short", seconds, f"clip is {seconds:.2f} s < {r.length.min_seconds} s")
                if r.length.enabled and seconds > r.length.max_seconds:
                    raise Dropped("video.length.long", seconds, f"clip is {seconds:.2f} s > {r.length.max_seconds} s")
                if r.scenes.enabled:
                    path = self.settings.clip_dir / f"m{spec.manifest_index:03d}_r{row.row:08d}_c{k:03d}.mp4"
                    clip["method"] = self._timed("clips", write_clip, source, path, start, end, info)
                try:
                    self.curate_clip(path, seconds, scores, sampling)
                except Dropped:
                    if path != source:
                        path.unlink(missing_ok=True)  # only kept clips stay on disk
                    raise
            except Dropped as drop:
                emit({**base, "status": "dropped", "field": "video", "rule": drop.rule, "value": drop.value,
                      "reason": drop.reason, "clip": clip, **sampling, "scores": scores})
                continue
            record = dict(base["record"])
            record["video"] = os.path.relpath(path, self.settings.out_dir)
            emit({**base, "status": "kept", "kept_row": {**record, "scores": scores, "clip": clip, **sampling,
                                                          "source": base["source"]}})

    # -- one shard -----------------------------------------------------------------------------
    def process_shard(self, spec: ShardSpec, manifest: Manifest, fingerprint: str,
                      progress: Callable[[int], None] = lambda n: None) -> dict:
        self.timings.clear()
        writer = ShardWriter(self.settings.output_prefix, spec, fingerprint)
        for number, raw in manifest.raw_rows(spec.start, spec.stop):
            item = raw if isinstance(raw, RowError) else manifest.validate(number, raw)
            self.curate_row(spec, item, raw, writer.add)
            progress(1)
        writer.record["timings"] = {k: round(v, 4) for k, v in sorted(self.timings.items())}
        return writer.commit()

    def curate_row(self, spec: ShardSpec, item: Row | RowError, raw, emit: Callable[[dict], None]) -> None:
        if isinstance(item, RowError):
            emit({**item.as_dict(), "status": "dropped", "rule": "input.invalid_row", "value": None,
                  "reason": item.reason})
            return
        source_ref = {"manifest": item.manifest, "row": item.row}
        record = {k: v for k, v in raw.items() if not isinstance(v, bytes)}
        base = {"manifest": item.manifest, "row": item.row, "path": item.media_label, "source": source_ref,
                "record": record}
        if item.media_field is None:
            emit({**base, "status": "kept", "kind": "text", "kept_row": {**record, "source": source_ref}})
            return
        source = item.media
        if isinstance(source, bytes):  # Parquet bytes: written out, the kept row points at the file
            source = self.settings.media_dir / f"m{spec.manifest_index:03d}_r{item.row:08d}"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(item.media)
        try:
            if item.media_field == "video":
                self.curate_video(item, Path(source), {**base, "kind": "video"}, emit, spec)
                return
            scores: dict = {}
            try:
                self.curate_image(source, scores)
            except Dropped as drop:
                emit({**base, "status": "dropped", "kind": "image", "field": "image", "rule": drop.rule,
                      "value": drop.value, "reason": drop.reason, "scores": scores})
                return
            kept = {**record, "image": os.path.relpath(source, self.settings.out_dir)}
            emit({**base, "status": "kept", "kind": "image", "kept_row": {**kept, "scores": scores, "source": source_ref}})
        except media.MediaError as err:
            emit({**base, "status": "dropped", "kind": item.media_field, "field": item.media_field,
                  "rule": "input.unreadable", "value": None, "reason": str(err)})
