"""Image and video loading: conversions, smart resize, bad files with clear reasons, video resampling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from megatron_emu3.data import media
from megatron_emu3.data.media import MediaError

from tests.preprocess import corpus


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK", "I;16", "L", "LA"])
def test_odd_modes_are_converted_to_rgb(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = corpus.save_image(tmp_path / f"img.{fmt.lower()}", 40, 24, mode=mode, fmt=fmt)
    img = media.load_image(path)
    assert img.mode == "RGB" and img.size == (40, 24)
    arr = np.asarray(img)
    assert arr.std() > 5  # the picture survived the conversion


def test_palette_transparency_goes_on_white(tmp_path):
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    img.paste(1, (8, 0, 16, 16))
    img.save(tmp_path / "p.png", transparency=0)
    arr = np.asarray(media.load_image(tmp_path / "p.png"))
    assert arr[0, 0].tolist() == [255, 255, 255] and arr[0, 15].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(corpus.gradient(40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert media.load_image(tmp_path / "o.jpg").size == (20, 40)


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"), ("empty", "empty"), ("truncated_png", "corrupt or truncated"),
    ("truncated_jpg", "corrupt or truncated"), ("text_as_jpg", "not an image"), ("tiny", "at least 8"),
    ("bomb", "decompression bomb"),
])
def test_bad_images_raise_clear_errors(tmp_path, case, match):
    good_png = corpus.save_image(tmp_path / "good.png", 64, 64)
    good_jpg = corpus.save_image(tmp_path / "good.jpg", 64, 64)
    path = tmp_path / f"{case}.img"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_png":
        corpus.truncated_copy(good_png, path)
    elif case == "truncated_jpg":
        corpus.truncated_copy(good_jpg, path)
    elif case == "text_as_jpg":
        path.write_text("this is not a picture\n")
    elif case == "tiny":
        corpus.save_image(path, 7, 30, fmt="PNG")
    elif case == "bomb":
        corpus.bomb_png(path)
    with pytest.raises(MediaError, match=match):
        media.load_image(path)


def test_images_from_bytes(tmp_path):
    assert media.load_image(corpus.png_bytes(24, 16)).size == (24, 16)
    with pytest.raises(MediaError, match="empty"):
        media.load_image(b"")


@pytest.mark.parametrize("h, w, lo, hi", [(512, 512, 512**2, 1024**2), (100, 3000, 512**2, 1024**2),
                                          (4000, 3000, 512**2, 1024**2), (64, 64, 32 * 32, 64 * 64),
                                          (33, 47, 16 * 16, 64 * 64), (720, 1280, 128**2, 512**2)])
def test_smart_resize_bounds(h, w, lo, hi):
    rh, rw = media.smart_resize(h, w, min_pixels=lo, max_pixels=hi)
    assert rh % 8 == 0 and rw % 8 == 0
    assert lo <= rh * rw <= hi
    assert abs(rh / rw - h / w) / (h / w) < 0.2


def test_prepare_image_scales_to_minus_one_one(tmp_path):
    path = corpus.save_image(tmp_path / "a.png", 60, 36)
    pixels = media.prepare_image(path, min_pixels=16, max_pixels=64 * 64)
    assert pixels.shape == (3, 40, 64) or pixels.shape[0] == 3
    assert pixels.shape[1] % 8 == 0 and pixels.shape[2] % 8 == 0
    assert pixels.dtype == np.float32 and -1.0 <= pixels.min() < 0 < pixels.max() <= 1.0
    np.testing.assert_array_equal(media.from_pixel_values(media.to_pixel_values(corpus.gradient(8, 8))),
                                  corpus.gradient(8, 8))


def test_video_resample_clip_and_multiple_of_four(tmp_path):
    path = corpus.save_video(tmp_path / "v.mp4", frames=30, fps=15, size=64)  # 2 s at 15 fps
    frames, fps = media.decode_video(path, fps=8, max_seconds=4, min_pixels=32 * 32, max_pixels=64 * 64)
    assert fps == 8 and frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
    clipped, _ = media.decode_video(path, fps=8, max_seconds=1.0, min_pixels=32 * 32, max_pixels=64 * 64)
    assert clipped.shape[0] == 8
    np.testing.assert_array_equal(clipped, frames[:8])
    odd, _ = media.decode_video(path, fps=5, max_seconds=4, min_pixels=32 * 32, max_pixels=64 * 64)
    assert odd.shape[0] == 8  # 10 samples at 5 fps, cut down to a multiple of 4


@pytest.mark.parametrize("case, match", [
    ("short", "at least 4"), ("audio", "no video stream"), ("truncated", "cannot be decoded"),
    ("text", "cannot be decoded"), ("empty", "empty")])
def test_bad_videos_raise_clear_errors(tmp_path, case, match):
    path = tmp_path / f"{case}.mp4"
    if case == "short":
        corpus.save_video(path, frames=3, fps=8)
    elif case == "audio":
        corpus.save_audio_only(path)
    elif case == "truncated":
        corpus.truncated_copy(corpus.save_video(tmp_path / "good.mp4"), path, keep=0.6)
    elif case == "text":
        path.write_text("not a video")
    else:
        path.write_bytes(b"")
    with pytest.raises(MediaError, match=match):
        media.decode_video(path, fps=8, min_pixels=32 * 32, max_pixels=64 * 64)
