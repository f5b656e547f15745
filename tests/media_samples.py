"""Real photographs and real-content videos for tests, from the sample images scikit-image ships.

Nothing is downloaded: the pictures are the files inside the `scikit-image` wheel (a dev extra),
real photographs of several sizes and modes:

| name | size (w x h) | mode | what |
|---|---|---|---|
| astronaut | 512 x 512 | RGB | portrait photograph |
| chelsea | 451 x 300 | RGB | a cat |
| coffee | 600 x 400 | RGB | a cup of coffee |
| rocket | 640 x 427 | RGB | a rocket on its pad |
| hubble | 1000 x 872 | RGB | Hubble deep field |
| retina | 1411 x 1411 | RGB | retina fundus photograph |
| ihc | 512 x 512 | RGB | microscopy slide |
| camera | 512 x 512 | L | grey photograph of a cameraman |
| moon | 512 x 512 | L | grey photograph of the moon's surface |
| page | 384 x 191 | L | a scanned page of printed text |
| logo | 500 x 500 | RGBA | scikit-image logo (drawn, with transparency) |

Videos are made from the photographs the way a camera would film them: a window pans and zooms
across a photograph (`pan_video`), optionally cutting hard to another photograph (`cuts`); a
still camera on one photograph (`static`) and a very fast pan (`speed`) are the same call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = {
    "astronaut": "astronaut", "chelsea": "chelsea", "coffee": "coffee", "rocket": "rocket",
    "hubble": "hubble_deep_field", "retina": "retina", "ihc": "immunohistochemistry",
    "camera": "camera", "moon": "moon", "page": "page", "logo": "logo",
}
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble", "retina", "ihc")


def photo(name: str) -> Image.Image:
    """The named sample photograph as a PIL image in its own mode (RGB, L or RGBA)."""
    import skimage.data

    if name not in PHOTOS:
        raise KeyError(f"unknown sample photo {name!r}; choose from {sorted(PHOTOS)}")
    return Image.fromarray(getattr(skimage.data, PHOTOS[name])())


def save_photo(path: Path, name: str, mode: str | None = None, fmt: str | None = None,
               size: tuple[int, int] | None = None) -> Path:
    """Write the sample photograph `name` to `path` (format from the suffix unless `fmt`), converted
    to `mode` and resized to `size` (w, h) when given. JPEG cannot hold RGBA: it is flattened."""
    img = photo(name)
    if size is not None:
        img = img.resize(size, Image.Resampling.BICUBIC)
    if mode is not None and img.mode != mode:
        img = img.convert(mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    is_jpeg = (fmt or path.suffix.lstrip(".")).lower() in ("jpg", "jpeg")
    if is_jpeg and img.mode in ("RGBA", "P", "LA"):
        img = img.convert("RGB")
    img.save(path, format=fmt, **({"quality": 92} if is_jpeg else {}))
    return path


def photo_set(directory: Path) -> list[Path]:
    """Every sample photograph written once, colour ones as JPEG, the others as PNG in their mode."""
    out = []
    for name in PHOTOS:
        suffix = ".jpg" if name in COLOUR_PHOTOS else ".png"
        out.append(save_photo(Path(directory) / f"{name}{suffix}", name))
    return out


def _rgb_array(name: str) -> np.ndarray:
    return np.asarray(photo(name).convert("RGB"))


def pan_frames(name: str, frames: int, size: tuple[int, int] = (128, 96), speed: float = 2.0,
               zoom: float = 0.0) -> list[np.ndarray]:
    """`frames` RGB frames (h, w, 3) of a camera window of `size` (w, h) moving `speed` source pixels
    per frame diagonally across photograph `name`, zooming in by `zoom` (fraction) over the clip.
    speed=0 and zoom=0 is a still camera."""
    src = _rgb_array(name)
    h_src, w_src = src.shape[:2]
    w_out, h_out = size
    base = min(w_src / w_out, h_src / h_out) * 0.6  # window covers 60% of the photo's short side
    out = []
    for i in range(frames):
        scale = base * (1.0 - zoom * i / max(frames - 1, 1))
        w_win, h_win = int(w_out * scale), int(h_out * scale)
        span_x, span_y = w_src - w_win, h_src - h_win
        x = int(i * speed) % (2 * span_x) if span_x > 0 else 0
        y = int(i * speed * 0.5) % (2 * span_y) if span_y > 0 else 0
        x = span_x - abs(span_x - x) if span_x > 0 else 0  # bounce at the edges
        y = span_y - abs(span_y - y) if span_y > 0 else 0
        crop = Image.fromarray(src[y:y + h_win, x:x + w_win]).resize(size, Image.Resampling.BILINEAR)
        out.append(np.asarray(crop))
    return out


def write_video(path: Path, frames: list[np.ndarray], fps: int = 8, crf: int = 18,
                keyframes: tuple[int, ...] = ()) -> Path:
    """Encode RGB frames as H.264 (yuv420p) with PyAV; the size must be even. Frame indices in
    `keyframes` are forced to be keyframes (as an editor's export puts them at cuts)."""
    import av

    h, w = frames[0].shape[:2]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": str(crf)}
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if i in keyframes:
                picture.pict_type = av.video.frame.PictureType.I
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def pan_video(path: Path, name: str = "coffee", frames: int = 16, size: tuple[int, int] = (128, 96),
              fps: int = 8, speed: float = 2.0, zoom: float = 0.1, cuts: tuple[str, ...] = (),
              keyframes_at_cuts: bool = False) -> Path:
    """An MP4 filming photograph `name` with a moving camera; each name in `cuts` starts a new shot
    (a hard cut) of another photograph, every shot `frames` frames long. `keyframes_at_cuts` forces
    a keyframe on the first frame of every shot (else the encoder places them)."""
    shots = [name, *cuts]
    all_frames = []
    for shot in shots:
        all_frames += pan_frames(shot, frames, size, speed, zoom)
    keyframes = tuple(range(0, len(all_frames), frames)) if keyframes_at_cuts else ()
    return write_video(path, all_frames, fps, keyframes=keyframes)


def colour_scan(name: str = "page", size: tuple[int, int] | None = None, paper: tuple[int, int, int] = (246, 236, 200),
                ink: tuple[int, int, int] = (30, 40, 120)) -> Image.Image:
    """A grey photograph (by default the scanned text page) as a colour scan: dark ink on tinted paper,
    resized to `size` (w, h) when given. Colourful enough to pass a colour filter, so a text filter is
    what must catch it."""
    grey = np.asarray(photo(name).convert("L"), dtype=np.float32)[..., None] / 255.0
    rgb = np.asarray(ink, np.float32) + grey * (np.asarray(paper, np.float32) - np.asarray(ink, np.float32))
    img = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    return img.resize(size, Image.Resampling.BICUBIC) if size is not None else img
