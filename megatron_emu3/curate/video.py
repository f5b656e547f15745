"""Video reading for curation (PyAV): probing a file, sampling frames at chosen times without holding
the clip in memory, and the frame-sampling rule by clip length."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np

from megatron_emu3.data.media import MediaError


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the scene splitter needs to know about a video file."""

    seconds: float
    fps: float
    width: int
    height: int
    frames: int
    keyframes: tuple[float, ...]  # presentation times (s, from the first frame) of the keyframes
    first_pts: int = 0  # the first frame's timestamp, in `time_base` units
    time_base: Fraction = Fraction(1, 1)


def video_error(err: Exception) -> MediaError:
    return MediaError(f"video cannot be decoded ({type(err).__name__}: {err}); the file may be truncated or not "
                      "a video; re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)")


def probe(path: str | Path) -> Probe:
    """Duration, rate, size and keyframe times, from demuxing every packet and decoding every frame
    (a file that does not decode to the end is unreadable, as in preprocessing)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("the file has no video stream (audio only?); give a video file")
            stream = container.streams.video[0]
            base = stream.time_base or Fraction(1, 1)
            times, keys, pts = [], [], []
            for frame in container.decode(stream):
                if frame.pts is not None:
                    pts.append(frame.pts)
                t = float(frame.pts * base) if frame.pts is not None else len(times) / float(stream.average_rate or 25)
                times.append(t)
                if frame.key_frame:
                    keys.append(t)
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = float(stream.average_rate or 0)
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise video_error(err) from err
    if not times:
        raise MediaError("the video stream has no decodable frame")
    t0 = min(times)
    fps = rate or (len(times) - 1) / max(max(times) - t0, 1e-6)
    return Probe(round(max(times) - t0 + 1.0 / fps, 6), fps, width, height, len(times),
                 tuple(sorted(round(k - t0, 6) for k in keys)), min(pts) if pts else 0, base)


def sample_frames(path: str | Path, times: list[float], short_side: int | None = None,
                  max_side: int = 1024) -> list[np.ndarray]:
    """RGB uint8 frames shown at each time in `times` (seconds from the first frame; the latest frame
    shown by then), scaled so the short side is `short_side` (else the long side at most `max_side`).
    Only the picked frames are kept in memory."""
    import av

    wanted = sorted(range(len(times)), key=lambda i: times[i])
    out: list[np.ndarray | None] = [None] * len(times)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            base = stream.time_base or Fraction(1, 1)
            t0, previous, k = None, None, 0
            for frame in container.decode(stream):
                t = float(frame.pts * base) if frame.pts is not None else 0.0
                t0 = t if t0 is None else t0
                while k < len(wanted) and times[wanted[k]] + 1e-6 < t - t0 and previous is not None:
                    out[wanted[k]] = previous
                    k += 1
                if k >= len(wanted):
                    break
                previous = _scaled(frame, short_side, max_side)
            while k < len(wanted) and previous is not None:
                out[wanted[k]] = previous
                k += 1
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise video_error(err) from err
    if any(f is None for f in out):
        raise MediaError("the video has no decodable frame")
    return out


def _scaled(frame, short_side: int | None, max_side: int) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = short_side / min(w, h) if short_side else min(1.0, max_side / max(w, h))
    if scale != 1.0:
        w, h = max(2, round(w * scale)), max(2, round(h * scale))
        return frame.to_ndarray(format="rgb24", width=w, height=h)
    return frame.to_ndarray(format="rgb24")


def even_times(seconds: float, count: int) -> list[float]:
    """`count` times spread evenly over a clip of `seconds` (the middle of equal parts)."""
    return [round(seconds * (i + 0.5) / count, 6) for i in range(count)]


def grid_times(seconds: float, fps: float) -> list[float]:
    """Times 0, 1/fps, ... inside a clip of `seconds` (at least two, for one flow pair)."""
    count = max(2, int(np.floor(seconds * fps + 1e-6)))
    return [round(i / fps, 6) for i in range(count)]
