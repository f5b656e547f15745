"""The curation test corpus: real photographs and real-content videos with known properties, and the
rule each row must be kept or dropped by."""

from __future__ import annotations

import json
from pathlib import Path

from tests.media_samples import colour_scan, pan_video, save_photo
from tests.preprocess.corpus import save_audio_only, truncated_copy


def build(root: Path) -> tuple[Path, list[tuple[dict, object]]]:
    """The media under root/media and root/raw.jsonl; returns (manifest, [(row, expected)]) where
    expected is "kept" or the rule that drops the row, a list of those per clip for a video."""
    m = root / "media"
    m.mkdir(parents=True, exist_ok=True)
    save_photo(m / "astronaut.jpg", "astronaut")
    save_photo(m / "hubble.jpg", "hubble")
    save_photo(m / "retina.jpg", "retina")
    save_photo(m / "astronaut_resized.png", "astronaut", size=(640, 640))  # the same photo, re-encoded + resized
    save_photo(m / "camera.png", "camera")  # grey photograph
    colour_scan("page", size=(1040, 517)).save(m / "page_scan.png")  # scanned text, upscaled past the size rule
    save_photo(m / "chelsea.jpg", "chelsea")  # 451 x 300
    (m / "broken.jpg").write_bytes((m / "astronaut.jpg").read_bytes()[:2000])
    pan_video(m / "cuts.mp4", "coffee", frames=24, cuts=("rocket", "retina"), keyframes_at_cuts=True)
    pan_video(m / "static.mp4", "coffee", frames=24, speed=0, zoom=0)
    pan_video(m / "fast.mp4", "coffee", frames=24, speed=60, zoom=0)
    pan_video(m / "short.mp4", "rocket", frames=8)  # 1 s
    truncated_copy(m / "static.mp4", m / "cut_off.mp4", keep=0.5)
    save_audio_only(m / "audio.mp4")
    rows = [
        ({"text": "an astronaut", "image": "media/astronaut.jpg"}, "kept"),
        ({"text": "the Hubble deep field", "image": "media/hubble.jpg"}, "kept"),
        ({"text": "a retina", "image": "media/retina.jpg", "task": "understanding"}, "kept"),
        ({"text": "an astronaut again", "image": "media/astronaut_resized.png"}, "image.near_duplicate"),
        ({"text": "a cameraman", "image": "media/camera.png"}, "colour.monochrome"),
        ({"text": "a printed page", "image": "media/page_scan.png"}, "image.ocr"),
        ({"text": "a cat", "image": "media/chelsea.jpg"}, "image.size"),
        ({"text": "a cut-off file", "image": "media/broken.jpg"}, "input.unreadable"),
        ({"text": "no such file", "image": "media/missing.png"}, "input.unreadable"),
        ({"text": "just words, no picture"}, "kept"),
        ({"text": "three shots", "video": "media/cuts.mp4"}, ["kept", "kept", "kept"]),
        ({"text": "a still camera", "video": "media/static.mp4"}, ["video.motion.static"]),
        ({"text": "a whip pan", "video": "media/fast.mp4"}, ["video.motion.too_fast"]),
        ({"text": "one second", "video": "media/short.mp4"}, ["video.length.short"]),
        ({"text": "half a file", "video": "media/cut_off.mp4"}, "input.unreadable"),
        ({"text": "only sound", "video": "media/audio.mp4"}, "input.unreadable"),
        ({"text": "   ", "image": "media/astronaut.jpg"}, "input.invalid_row"),
    ]
    manifest = root / "raw.jsonl"
    with open(manifest, "w") as f:
        for row, _ in rows:
            f.write(json.dumps(row) + "\n")
        f.write("{not json\n")
    rows.append((None, "input.invalid_row"))
    return manifest, rows
