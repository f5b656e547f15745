"""Training samples for the VQ tokenizer from preprocessing manifests (images and videos).

The manifests are read with `preprocess.manifest` and the media decoded with `data.media`, exactly
as preprocessing does. Rows without media are counted and left out; rows whose media cannot be
decoded are counted, reported once, and replaced by the next item of the epoch's order.

Every sample is a pure function of (seed, global sample index): the epoch's permutation and the
random crop come from generators seeded with them. The sample indices of a step follow from the
step, so a resumed run (or any number of DataLoader workers) reads exactly the same data.
Global sample k of step s: k = s * global_batch + (micro * world + rank) * micro_batch + j, so
DP=2 with micro-batch 1 reads what one rank with micro-batch 2 reads.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import torch
from PIL import Image

from megatron_emu3.data.media import MediaError, decode_video, load_image, to_pixel_values
from megatron_emu3.preprocess.manifest import Manifest, RowError

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 16


@dataclasses.dataclass(frozen=True)
class MediaItem:
    manifest: str
    row: int
    kind: str  # "image" | "video"
    media: str | bytes

    @property
    def label(self) -> str:
        return f"{self.manifest} row {self.row}"


def read_items(manifests: list[str]) -> tuple[list[MediaItem], Counter]:
    """Every image/video row of the manifests, in order, and counts of what was left out."""
    items, left_out = [], Counter()
    for path in manifests:
        manifest = Manifest(path)
        for row in manifest.rows(0, manifest.num_rows):
            if isinstance(row, RowError):
                left_out["invalid rows"] += 1
                logger.warning("%s row %d skipped: %s (%s)", row.manifest, row.row, row.reason, row.field)
            elif row.media_field is None:
                left_out["text-only rows"] += 1
            else:
                items.append(MediaItem(row.manifest, row.row, row.media_field, row.media))
    return items, left_out


def split_holdout(items: list[MediaItem], holdout: int) -> tuple[list[MediaItem], list[MediaItem]]:
    """The last `holdout` items are held out (never trained on)."""
    if holdout >= len(items):
        raise ValueError(f"data.holdout={holdout} leaves nothing to train on ({len(items)} media rows); "
                         "lower it or give data.eval_manifests")
    return (items[:-holdout], items[-holdout:]) if holdout else (items, [])


def _resize_short_side(frames: np.ndarray, short: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> short side `short`, bicubic (a no-op at the right size)."""
    h, w = frames.shape[1:3]
    if min(h, w) == short:
        return frames
    scale = short / min(h, w)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames])


def load_frames(item: MediaItem, clip_frames: int, fps: float, max_seconds: float,
                rng: np.random.Generator | None) -> np.ndarray:
    """uint8 (T, H, W, 3): an image as T=1, a video as `clip_frames` consecutive frames (a random
    start with `rng`, the first frames without)."""
    if item.kind == "image":
        return np.asarray(load_image(item.media))[None]
    clip, _ = decode_video(item.media, fps=fps, max_seconds=max_seconds, min_pixels=64, max_pixels=1 << 40)
    if len(clip) < clip_frames:
        raise MediaError(f"video gives {len(clip)} frames at {fps:g} fps; a training clip needs "
                         f"{clip_frames} (data.clip_frames)")
    start = int(rng.integers(0, len(clip) - clip_frames + 1)) if rng is not None else 0
    return clip[start:start + clip_frames]


def crop(frames: np.ndarray, resolution: int, scale: tuple[float, float], rng: np.random.Generator | None):
    """Resize the short side to U(scale)*resolution (at least `resolution`, at most the original
    unless that is smaller than `resolution`), then a random (rng) or centre (None) square crop."""
    short = min(frames.shape[1:3])
    target = resolution
    if rng is not None and scale[1] > 1.0:
        target = int(round(rng.uniform(*scale) * resolution))
    target = max(resolution, min(target, max(short, resolution)))
    frames = _resize_short_side(frames, target)
    h, w = frames.shape[1:3]
    if rng is not None:
        top, left = int(rng.integers(0, h - resolution + 1)), int(rng.integers(0, w - resolution + 1))
    else:
        top, left = (h - resolution) // 2, (w - resolution) // 2
    return frames[:, top:top + resolution, left:left + resolution]


class TrainSamples(torch.utils.data.Dataset):
    """Global sample index -> {"pixels": float32 (T, 3, R, R) in [-1, 1], "still", "skipped"}."""

    def __init__(self, items: list[MediaItem], data_cfg, seed: int):
        if not items:
            raise ValueError("no image or video rows to train on in data.manifests")
        self.items, self.cfg, self.seed = items, data_cfg, seed
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return 1 << 62  # indexed by global sample number, never exhausted

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.items))
        return self._order

    def __getitem__(self, index: int) -> dict:
        n = len(self.items)
        skipped = []
        for attempt in range(MAX_REPLACEMENTS):
            k = index + attempt
            item = self.items[self.order(k // n)[k % n]]
            rng = np.random.default_rng([self.seed, 2, index, attempt])
            try:
                frames = load_frames(item, self.cfg.clip_frames, self.cfg.video_fps, self.cfg.video_max_seconds, rng)
                frames = crop(frames, self.cfg.resolution, tuple(self.cfg.short_side_scale), rng)
            except MediaError as err:
                skipped.append(f"{item.label} ({item.kind}): {err}")
                continue
            return {"pixels": torch.from_numpy(to_pixel_values(frames)), "still": item.kind == "image",
                    "index": index, "skipped": skipped}
        raise RuntimeError(f"{MAX_REPLACEMENTS} media in a row could not be decoded around sample {index}: "
                           + "; ".join(skipped[:3]))


def sample_indices(step: int, micro: int, rank: int, world: int, micro_batch: int, grad_accum: int) -> list[int]:
    global_batch = micro_batch * grad_accum * world
    first = step * global_batch + (micro * world + rank) * micro_batch
    return list(range(first, first + micro_batch))


class StepSampler(torch.utils.data.Sampler):
    """This rank's micro-batches of global sample indices from step `start` to `steps`."""

    def __init__(self, start: int, steps: int, rank: int, world: int, micro_batch: int, grad_accum: int):
        self.args = (start, steps, rank, world, micro_batch, grad_accum)

    def __iter__(self):
        start, steps, rank, world, micro_batch, grad_accum = self.args
        for step in range(start, steps):
            for micro in range(grad_accum):
                yield sample_indices(step, micro, rank, world, micro_batch, grad_accum)

    def __len__(self) -> int:
        start, steps, *_, grad_accum = self.args
        return (steps - start) * grad_accum


@dataclasses.dataclass
class Group:
    """Samples of one shape: pixels (B, T, 3, H, W); `still`: images (T == 1)."""

    pixels: torch.Tensor
    still: bool


def collate(samples: list[dict]) -> tuple[list[Group], list[str]]:
    """Samples -> groups of equal shape (images and clips cannot share a tensor) + skipped media."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for s in samples:
        groups.setdefault((s["still"], tuple(s["pixels"].shape)), []).append(s["pixels"])
    skipped = [msg for s in samples for msg in s["skipped"]]
    return [Group(torch.stack(v), still) for (still, _), v in groups.items()], skipped


def train_loader(dataset: TrainSamples, sampler: StepSampler, workers: int):
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate)


def eval_samples(items: list[MediaItem], data_cfg, limit: int) -> tuple[list[dict], list[str]]:
    """The fixed held-out set: centre crops at the evaluation resolution, first frames of videos."""
    resolution = data_cfg.eval_resolution or data_cfg.resolution
    out, skipped = [], []
    for item in items:
        if len(out) >= limit:
            break
        try:
            frames = load_frames(item, data_cfg.clip_frames, data_cfg.video_fps, data_cfg.video_max_seconds, None)
            frames = crop(frames, resolution, (1.0, 1.0), None)
        except MediaError as err:
            skipped.append(f"{item.label} ({item.kind}): {err}")
            continue
        out.append({"pixels": torch.from_numpy(to_pixel_values(frames)), "still": item.kind == "image",
                    "label": item.label})
    return out, skipped
