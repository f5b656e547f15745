"""Vision documents sized for a training stage: each stage's defaults and the resize-to-fit rule.

Stages (`--stage`, docs/preprocessing.md); every value can be overridden by its own flag:

| stage | context | images (area) | why |
|---|---|---|---|
| 1 | 5,120 | 256^2..512^2 | Emu3 pretrains on images of an area near 512x512 (a 64x64 grid, ~4,200 tokens) |
| 2 | 131,072 | 512^2..1024^2 | videos and larger images at the stage-2 context |
| qft | 10,240 | 512^2..720^2 | quality fine-tuning at 720px (a 90x90 grid, ~8,200 tokens) |

Video frames keep the flags' own defaults at every stage (128^2..512^2, 8 fps, 4 s: 8 latent frames
of up to 64x64 codes, ~33k tokens, for stage 2); at a shorter context the rule below shrinks them.

The rule (`fit_image`, `fit_video`): the area range above gives the target size (smart resize,
sides multiples of the tokenizer's spatial factor). When caption + meta + grid would still exceed
the context, the item is made smaller, never truncated:

- an image is scaled down (aspect ratio kept, both sides rounded down to multiples of the factor)
  to the largest area whose document fits, but not below the minimum area;
- a video first gets smaller frames the same way (whole clip kept) down to the minimum frame area;
  if the clip does not fit even then, it is cut to the longest prefix of whole latent frames
  (`temporal_factor` frames each) that fits at that area; the frame rate is never lowered.

Only an item that does not fit even at the minimum area (and, for a video, one latent frame) is
skipped. Items made smaller by this rule are counted in the shard records ("resized_to_fit").
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from megatron_emu3.data.media import scaled_size, smart_resize

STAGES: dict[str, dict] = {
    "1": {"max_seq_len": 5120, "min_pixels": 256 * 256, "max_pixels": 512 * 512},
    "2": {"max_seq_len": 131072, "min_pixels": 512 * 512, "max_pixels": 1024 * 1024},
    "qft": {"max_seq_len": 10240, "min_pixels": 512 * 512, "max_pixels": 720 * 720},
}
DEFAULT_STAGE = "1"


@dataclasses.dataclass(frozen=True)
class Fit:
    """The pixel size (and for a video the number of frames) an item is tokenized at."""

    height: int
    width: int
    frames: int = 1
    resized: bool = False
    """Smaller than the area range alone would make it, to fit the context."""
    shortened: bool = False
    """A video cut to fewer frames to fit the context."""


def _largest_fitting(height: int, width: int, factor: int, low: int, high: int,
                     fits: Callable[[int, int], bool]) -> tuple[int, int] | None:
    """The size of the largest area in [low, high] (by bisection) whose `fits(h, w)` holds."""
    if not fits(*scaled_size(height, width, low, factor)):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if fits(*scaled_size(height, width, mid, factor)):
            low = mid
        else:
            high = mid - 1
    return scaled_size(height, width, low, factor)


def fit_image(height: int, width: int, doc_length: Callable[[int, int], int], max_seq_len: int,
              min_pixels: int, max_pixels: int, factor: int, fit: bool = True) -> Fit | None:
    """The size to tokenize an image of `height` x `width` at; None if its document cannot fit.

    `doc_length(grid_h, grid_w)`: tokens of the whole document for a latent grid of that size.
    With `fit=False` the area range alone decides (None when that is too long).
    """
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    fits = lambda hh, ww: doc_length(hh // factor, ww // factor) <= max_seq_len  # noqa: E731
    if fits(h, w):
        return Fit(h, w)
    if not fit or h * w <= factor * factor:
        return None
    best = _largest_fitting(height, width, factor, min(min_pixels, h * w - 1), h * w - 1, fits)
    return None if best is None else Fit(*best, resized=True)


def fit_video(frames: int, height: int, width: int, doc_length: Callable[[int, int, int], int], max_seq_len: int,
              min_pixels: int, max_pixels: int, factor: int, temporal_factor: int, fit: bool = True) -> Fit | None:
    """The frame size and frame count to tokenize a clip of `frames` x `height` x `width` at; None
    if its document cannot fit. `doc_length(latent_frames, grid_h, grid_w)` as in `fit_image`."""
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    latent = frames // temporal_factor

    def fits_with(t: int) -> Callable[[int, int], bool]:
        return lambda hh, ww: doc_length(t, hh // factor, ww // factor) <= max_seq_len

    if fits_with(latent)(h, w):
        return Fit(h, w, frames)
    if not fit:
        return None
    low = min(min_pixels, h * w - 1)
    if h * w > factor * factor:
        best = _largest_fitting(height, width, factor, low, h * w - 1, fits_with(latent))
        if best is not None:
            return Fit(*best, frames, resized=True)
    small = scaled_size(height, width, max(low, 1), factor)
    for t in range(latent - 1, 0, -1):
        if fits_with(t)(*small):
            return Fit(*small, t * temporal_factor, resized=True, shortened=True)
    return None


def fit_interleaved(sizes: list[tuple[int, int, int, int]], doc_length: Callable[[list[tuple[int, int]]], int],
                    max_seq_len: int, factor: int, fit: bool = True) -> tuple[list[tuple[int, int]], bool] | None:
    """Pixel sizes of every vision segment of an interleaved document, and whether they were shrunk.

    `sizes`: (height, width, min_pixels, max_pixels) per segment; `doc_length(pixel sizes)`: tokens of the
    whole document. Each segment first gets its area range's size; when the document does not fit, every
    segment's area is scaled by one common factor (the largest that fits, by bisection; each segment
    not below its own minimum area), so the pictures keep their relative sizes. None if even all the
    minimum areas do not fit (frames are never dropped from an interleaved clip).
    """
    natural = [smart_resize(h, w, factor, lo, hi) for h, w, lo, hi in sizes]
    if doc_length(natural) <= max_seq_len:
        return natural, False
    if not fit:
        return None

    def scaled(s: float) -> list[tuple[int, int]]:
        return [scaled_size(h, w, max(min(lo, nh * nw), int(s * nh * nw)), factor)
                for (h, w, lo, _), (nh, nw) in zip(sizes, natural)]

    if doc_length(scaled(0.0)) > max_seq_len:
        return None
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        if doc_length(scaled(mid)) <= max_seq_len:
            low = mid
        else:
            high = mid
    return scaled(low), True
