"""Builders of test media: good and deliberately broken images and videos (Pillow and PyAV)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (uint8 HWC), different per seed."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1) + seed * 37) % 256
    g = (y * 255 // max(h - 1, 1) + seed * 91) % 256
    b = ((x + y) * 127 // max(w + h - 2, 1) + seed * 53) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def save_image(path: Path, w: int = 64, h: int = 64, seed: int = 0, mode: str = "RGB", fmt: str | None = None) -> Path:
    img = Image.fromarray(gradient(w, h, seed))
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray((gradient(w, h, seed)[..., 0] // 2 + 100).astype(np.uint8)))
    elif mode == "CMYK":
        img = img.convert("CMYK")
    elif mode == "I;16":
        img = Image.fromarray((gradient(w, h, seed)[..., 0].astype("<u2") * 257))
        assert img.mode == "I;16", img.mode
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def bomb_png(path: Path) -> Path:
    """A 1-bit PNG over Pillow's MAX_IMAGE_PIXELS (about 90M pixels) that is only a few KB on disk."""
    Image.new("1", (10_000, 9_000)).save(path, format="PNG")
    return path


def save_video(path: Path, frames: int = 16, fps: int = 8, size: int = 64, seed: int = 0) -> Path:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for i in range(frames):
            frame = np.roll(gradient(size, size, seed), i * 3, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_audio_only(path: Path) -> Path:
    """An .mp4 that holds one AAC audio stream and no video stream."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = (np.sin(np.arange(16000) / 10) * 8000).astype(np.int16)[None]
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def png_bytes(w: int = 64, h: int = 64, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gradient(w, h, seed)).save(buf, format="PNG")
    return buf.getvalue()
