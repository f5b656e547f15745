"""Images and videos in, VQ-ready pixel arrays out (Pillow for images, PyAV for video; no torchvision).

- `load_image`: any Pillow-readable file or bytes -> RGB, EXIF orientation applied; palette, alpha
  (composited on white), CMYK, grey and 16-bit images converted, never rejected; truncated, empty,
  non-image and decompression-bomb inputs raise `MediaError` with a reason a person understands.
- `smart_resize`: (h, w) -> the nearest size with both sides multiples of `factor` and an area in
  [min_pixels, max_pixels], aspect ratio kept as well as rounding allows; `scaled_size`: the size
  scaled to at most a given area (both sides rounded down), used to fit a stage's context
  (`megatron_emu3.preprocess.fit`).
- `read_video`: frames resampled to `fps` (nearest earlier frame per timestamp), clipped to
  `max_seconds`, cut to a multiple of 4 frames; a clip with fewer than 4 frames raises `MediaError`
  (the documented short-video rule: skipped, never padded). `decode_video` = `read_video` + smart
  resize of every frame (`resize_frames`).
- `to_pixel_values`: uint8 HWC -> float32 CHW in [-1, 1] (mean = std = 0.5).
"""

from __future__ import annotations

import io
import math
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MIN_PIXELS = 512 * 512
DEFAULT_MAX_PIXELS = 1024 * 1024
SPATIAL_FACTOR = 8
TEMPORAL_FACTOR = 4


class MediaError(ValueError):
    """An input image or video that cannot be used; the message says why and what to do."""


Source = str | Path | bytes


def _open_source(source: Source):
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaError("the media bytes are empty (0 bytes)")
        return io.BytesIO(bytes(source))
    path = Path(source)
    if not path.exists():
        raise MediaError(f"file {path} does not exist")
    if not path.is_file():
        raise MediaError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(f"file {path} is empty (0 bytes)")
    return path


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16/32-bit and float scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        else:
            arr = arr / hi * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(source: Source, min_side: int = SPATIAL_FACTOR) -> Image.Image:
    """A fully decoded RGB image; raises MediaError for anything unusable."""
    opened = _open_source(source)
    try:
        with warnings.catch_warnings():
            # Over Image.MAX_IMAGE_PIXELS Pillow only warns; treat it as the bomb it may be.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MediaError(f"image is a possible decompression bomb ({err}); shrink it below "
                         f"{Image.MAX_IMAGE_PIXELS:,} pixels or raise --max-image-pixels") from err
    except Image.UnidentifiedImageError as err:
        raise MediaError("not an image Pillow can read (wrong extension, or not an image at all)") from err
    except OSError as err:
        raise MediaError(f"image data is corrupt or truncated ({err}); re-export or re-download it") from err
    except (ValueError, SyntaxError, EOFError) as err:
        raise MediaError(f"image cannot be decoded ({type(err).__name__}: {err})") from err
    if min(rgb.size) < min_side:
        raise MediaError(f"image is {rgb.size[0]}x{rgb.size[1]} pixels; both sides must be at least {min_side}")
    return rgb


def smart_resize(height: int, width: int, factor: int = SPATIAL_FACTOR,
                 min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(h, w) rounded to multiples of `factor` with the area scaled into [min_pixels, max_pixels]."""
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {height}x{width}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} is larger than max_pixels {max_pixels}")
    if max(height, width) / min(height, width) > 200:
        raise MediaError(f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is too extreme (over 200:1)")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def scaled_size(height: int, width: int, area: int, factor: int = SPATIAL_FACTOR) -> tuple[int, int]:
    """(h, w) scaled (up or down) to an area of at most `area`, aspect ratio kept, both sides rounded
    down to multiples of `factor` (at least `factor`). Larger `area` never gives a smaller size."""
    if height <= 0 or width <= 0 or area <= 0:
        raise ValueError(f"size and area must be positive, got {height}x{width}, area {area}")
    scale = math.sqrt(area / (height * width))
    return (max(factor, math.floor(height * scale / factor) * factor),
            max(factor, math.floor(width * scale / factor) * factor))


def resize_to(img: Image.Image, height: int, width: int) -> Image.Image:
    """Bicubic resize to exactly (height, width) (a no-op when already that size)."""
    return img if (height, width) == (img.height, img.width) else img.resize((width, height), Image.Resampling.BICUBIC)


def resize_image(img: Image.Image, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS, factor: int = SPATIAL_FACTOR) -> Image.Image:
    """Bicubic smart resize (a no-op when the size is already right)."""
    return resize_to(img, *smart_resize(img.height, img.width, factor, min_pixels, max_pixels))


def to_pixel_values(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    arr = np.asarray(frames, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(arr / 127.5 - 1.0, -1, -3))


def from_pixel_values(pixels) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    arr = np.moveaxis(np.asarray(pixels, dtype=np.float32), -3, -1)
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)


def prepare_image(source: Source, min_pixels: int = DEFAULT_MIN_PIXELS,
                  max_pixels: int = DEFAULT_MAX_PIXELS, factor: int = SPATIAL_FACTOR) -> np.ndarray:
    """Load, convert and resize an image: float32 (3, H, W) in [-1, 1], H and W multiples of `factor`
    (the vision tokenizer's spatial factor; Emu3's 8 by default)."""
    img = resize_image(load_image(source, min_side=factor), min_pixels, max_pixels, factor)
    return to_pixel_values(np.asarray(img))


def decode_video(source: Source, fps: float = 8.0, max_seconds: float = 4.0,
                 min_pixels: int = 128 * 128, max_pixels: int = 512 * 512) -> tuple[np.ndarray, float]:
    """Decode, resample to `fps`, clip and resize a video: (uint8 (T, H, W, 3), fps) with T % 4 == 0."""
    clip, fps = read_video(source, fps, max_seconds)
    return resize_frames(clip, *smart_resize(clip.shape[1], clip.shape[2], min_pixels=min_pixels,
                                             max_pixels=max_pixels)), fps


def resize_frames(clip: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, height, width, 3), bicubic per frame (a no-op at the same size)."""
    if (height, width) == clip.shape[1:3]:
        return clip
    return np.stack([np.asarray(resize_to(Image.fromarray(f), height, width)) for f in clip])


def read_video(source: Source, fps: float = 8.0, max_seconds: float = 4.0,
               multiple: int = TEMPORAL_FACTOR) -> tuple[np.ndarray, float]:
    """Decode, resample to `fps` and clip a video at its own size: (uint8 (T, H, W, 3), fps) with T a
    multiple of `multiple` (the vision tokenizer's temporal factor)."""
    import av  # PyAV bundles FFmpeg; imported lazily so text-only runs do not pay for it

    opened = _open_source(source)
    decoded: list[tuple[float, np.ndarray]] = []
    try:
        with av.open(str(opened) if isinstance(opened, Path) else opened, mode="r") as container:
            if not container.streams.video:
                raise MediaError("the file has no video stream (audio only?); give a video file")
            stream = container.streams.video[0]
            base = stream.time_base or Fraction(1, 1)
            for frame in container.decode(stream):
                t = float(frame.pts * base) if frame.pts is not None else len(decoded) / fps
                if decoded and t - decoded[0][0] >= max_seconds:
                    break
                decoded.append((t, frame.to_ndarray(format="rgb24")))
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise MediaError(f"video cannot be decoded ({type(err).__name__}: {err}); the file may be truncated "
                         "or not a video; re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)") from err
    frames = _resample(decoded, fps)
    usable = len(frames) - len(frames) % multiple
    if usable < multiple:
        raise MediaError(f"video gives {len(frames)} frame(s) at {fps:g} fps; at least {multiple} are needed "
                         "(shorter videos are skipped, not padded)")
    return np.stack(frames[:usable]), float(fps)


def _resample(decoded: list[tuple[float, np.ndarray]], fps: float) -> list[np.ndarray]:
    """For each time start + k / fps up to the last frame's time: the latest frame shown by then."""
    if not decoded:
        return []
    decoded.sort(key=lambda item: item[0])
    times = np.array([t for t, _ in decoded]) - decoded[0][0]
    count = int(math.floor(times[-1] * fps + 1e-6)) + 1
    picks = np.searchsorted(times, np.arange(count) / fps + 1e-6, side="right") - 1
    return [decoded[i][1] for i in picks]
