"""Every stage gets documents it can hold: real photographs through stage-1 preprocessing at the
defaults (all written, aspect ratio kept within a code, <= 5,120 tokens), a real-content video through
stage 2, and the resize-to-fit rule itself (largest area that fits, minimum area, shorter clips)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_emu3.data import documents
from megatron_emu3.data.media import scaled_size, smart_resize
from megatron_emu3.preprocess import fit, inspect
from megatron_emu3.preprocess.cli import main

from tests.media_samples import COLOUR_PHOTOS, PHOTOS, pan_video, photo, photo_set

REPO = Path(__file__).resolve().parents[2]


def preprocess(manifest: Path, prefix: Path, vq_dir: Path, *extra: str, subprocess_cli: bool = False) -> dict:
    """tools/preprocess_data.py (as a user runs it with `subprocess_cli`, else its main()); the report."""
    argv = ["--input", str(manifest), "--output-prefix", str(prefix), "--vq-dir", str(vq_dir), "--no-progress",
            "--threads", "1", *extra]
    if subprocess_cli:
        done = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), *argv],
                              capture_output=True, text=True, timeout=600, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Warning" not in done.stderr, done.stderr[-3000:]  # megatron-core's import-time noise is silenced
    else:
        assert main(argv) == 0
    return json.loads(Path(f"{prefix}_report.json").read_text())


def keeps_aspect(grid_h: int, grid_w: int, height: int, width: int) -> bool:
    """Some scale s puts both sides within one code: |grid_h - s*height| <= 1 and |grid_w - s*width| <= 1."""
    low = max((grid_h - 1) / height, (grid_w - 1) / width)
    high = min((grid_h + 1) / height, (grid_w + 1) / width)
    return low <= high


def test_real_photos_fit_stage_one_at_the_defaults(tmp_path, vq_dir, text_tokenizer):
    paths = photo_set(tmp_path / "photos")
    long_caption = "A dense caption that describes every part of the picture in detail. " * 160
    rows = [{"text": f"a photograph: {p.stem}", "image": str(p), **({"task": "understanding"} if p.stem == "moon" else {})}
            for p in paths]
    rows.append({"text": long_caption, "image": str(tmp_path / "photos" / "hubble.jpg")})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = preprocess(manifest, tmp_path / "out" / "s", vq_dir, "--batch-size", "4", subprocess_cli=True)
    assert report["stage"] == "1" and report["settings"]["max_seq_len"] == 5120
    assert report["skipped_count"] == 0, report["skipped"]
    assert report["documents_written"] == len(rows)
    assert report["resized_to_fit"]["image"] == 1  # only the long caption needed more than the area range
    assert report["longest_document"] <= 5120
    shards = inspect.ShardSet(tmp_path / "out" / "s")
    sizes = {name: photo(name).size for name in PHOTOS}
    for i, row in enumerate(rows):
        ids, _ = shards[i]
        doc = documents.parse(ids, text_tokenizer)
        assert len(ids) <= 5120
        assert text_tokenizer.decode(doc.text_ids.tolist()) == row["text"]
        width, height = sizes[Path(row["image"]).stem]
        grid_h, grid_w = doc.codes.shape
        assert keeps_aspect(grid_h, grid_w, height, width), (row["image"], doc.codes.shape, (height, width))
        if row["text"] is long_caption:
            assert grid_h * grid_w < 3100  # shrunk below the 512^2 target to make room for the caption
        elif width * height >= 512 * 512:  # large photos land near the stage-1 area of 512^2 (64x64 codes)
            assert 0.9 * 4096 <= grid_h * grid_w <= 4096, (row["image"], doc.codes.shape)
        else:  # small ones (page 384x191, chelsea 451x300, ...) keep their size, rounded to codes
            assert (grid_h, grid_w) == (round(height / 8), round(width / 8)), (row["image"], doc.codes.shape)
    assert {Path(r["image"]).suffix for r in rows} == {".jpg", ".png"}
    assert {photo(n).mode for n in PHOTOS} == {"RGB", "L", "RGBA"} and len(COLOUR_PHOTOS) < len(PHOTOS)


def test_real_video_through_stage_two_and_shortened_at_stage_one(tmp_path, vq_dir, text_tokenizer):
    video = pan_video(tmp_path / "pan.mp4", "rocket", frames=8, size=(160, 120), cuts=("coffee",))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"text": "a camera pans across a rocket, then a cup of coffee",
                                    "video": str(video)}) + "\n")
    report = preprocess(manifest, tmp_path / "two" / "s", vq_dir, "--stage", "2")
    assert report["documents_written"] == 1 and report["settings"]["max_seq_len"] == 131072
    assert report["resized_to_fit"] == {"image": 0, "video": 0, "video_shortened": 0, "interleaved": 0}
    doc = documents.parse(inspect.ShardSet(tmp_path / "two" / "s")[0][0], text_tokenizer)
    assert doc.codes.shape == (4, 15, 20) and doc.meta.text() == "15*20*4 8fps 2.00s"
    # The same clip where only 2 latent frames fit even at the minimum frame area: cut, not skipped.
    report = preprocess(manifest, tmp_path / "short" / "s", vq_dir, "--max-seq-len", "500",
                        "--video-min-pixels", str(96 * 128))
    assert report["documents_written"] == 1 and report["resized_to_fit"]["video_shortened"] == 1
    ids, _ = inspect.ShardSet(tmp_path / "short" / "s")[0]
    doc = documents.parse(ids, text_tokenizer)
    assert len(ids) <= 500 and doc.codes.shape == (2, 12, 16)
    assert doc.meta.seconds == doc.codes.shape[0] * 4 / 8


# -- the rule itself ---------------------------------------------------------------------------------

def image_length(text_len: int):
    return lambda h, w: documents.vision_document_length(text_len, 3, 1, h, w)


@pytest.mark.parametrize("size", [(872, 1000), (1411, 1411), (191, 384), (300, 4000), (2000, 90)])
def test_fit_image_takes_the_largest_area_that_fits(size):
    height, width = size
    for text_len, max_len in ((10, 5120), (1000, 5120), (4000, 5120), (50, 600)):
        got = fit.fit_image(height, width, image_length(text_len), max_len, 64 * 64, 512 * 512, 8)
        assert got is not None
        assert got.height % 8 == 0 and got.width % 8 == 0
        length = image_length(text_len)(got.height // 8, got.width // 8)
        assert length <= max_len
        assert keeps_aspect(got.height // 8, got.width // 8, height, width)
        if got.resized:  # the next larger size of this aspect ratio would not fit
            area = got.height * got.width
            bigger = next(b for a in range(area, 4 * area, 16) if (b := scaled_size(height, width, a, 8))[0]
                          * b[1] > area)
            assert image_length(text_len)(bigger[0] // 8, bigger[1] // 8) > max_len


def test_fit_image_skips_only_below_the_minimum_area_and_respects_no_fit():
    too_long = image_length(5000)
    assert fit.fit_image(512, 512, too_long, 5120, 128 * 128, 512 * 512, 8) is None  # 16x16 codes need 272
    assert fit.fit_image(512, 512, too_long, 5120, 64 * 64, 512 * 512, 8).resized
    assert fit.fit_image(1000, 1000, image_length(10), 5120, 64 * 64, 1024 * 1024, 8, fit=False) is None
    assert fit.fit_image(1000, 1000, image_length(10), 5120, 64 * 64, 512 * 512, 8, fit=False) == fit.Fit(512, 512)


def test_fit_video_prefers_smaller_frames_then_fewer():
    def length(t, h, w):
        return documents.vision_document_length(20, 10, t, h, w)

    whole = fit.fit_video(32, 480, 640, length, 131072, 128 * 128, 512 * 512, 8, 4)
    assert whole == fit.Fit(*smart_resize(480, 640, 8, 128 * 128, 512 * 512), 32)  # the area range alone
    smaller = fit.fit_video(32, 480, 640, length, 5120, 128 * 128, 512 * 512, 8, 4)
    assert smaller.frames == 32 and smaller.resized and not smaller.shortened
    assert length(8, smaller.height // 8, smaller.width // 8) <= 5120
    shorter = fit.fit_video(32, 480, 640, length, 1500, 128 * 128, 512 * 512, 8, 4)
    assert shorter.shortened and (shorter.height, shorter.width) == (104, 144)
    assert length(shorter.frames // 4, 13, 18) <= 1500 < length(shorter.frames // 4 + 1, 13, 18)
    assert fit.fit_video(32, 480, 640, length, 200, 128 * 128, 512 * 512, 8, 4) is None
