"""The pure parts of curation, fast: the rules file, pHash near-duplicates on real photographs, the
sampling table, the Pillow histogram fallback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from megatron_emu3.curate.dedup import distance, near_duplicates, phash
from megatron_emu3.curate.rules import Rules, RulesError, frames_for_length, load_rules
from tests.media_samples import COLOUR_PHOTOS, photo

RULES = Path(__file__).resolve().parents[2] / "examples" / "curation" / "rules.yaml"


def test_example_rules_are_the_defaults_and_typos_are_errors(tmp_path):
    assert load_rules(RULES) == Rules()
    for text, message in (("video: {motion: {min_score: high}}", "expected a number"),
                          ("video: {sampling: {table: [[10, 4]]}}", "last row must have max_seconds null"),
                          ("video: {scenes: {detector: histogram}}", "adaptive or content"),
                          ("image: {size: {enabled: 1}}", "true/false")):
        (tmp_path / "r.yaml").write_text(text)
        with pytest.raises(RulesError, match=message):
            load_rules(tmp_path / "r.yaml")


def test_sampling_table_by_clip_length():
    sampling = Rules().video.sampling
    assert [frames_for_length(sampling, s) for s in (1.0, 10.0, 10.5, 30.0, 300.0)] == [4, 4, 8, 8, 16]


def test_phash_finds_resized_reencoded_copies_and_nothing_else(tmp_path):
    hashes = {name: phash(photo(name).convert("RGB")) for name in COLOUR_PHOTOS}
    path = tmp_path / "astronaut.jpg"
    photo("astronaut").resize((700, 700), Image.Resampling.BICUBIC).save(path, quality=70)
    copy = phash(Image.open(path))
    assert distance(copy, hashes["astronaut"]) <= 6
    assert min(distance(a, b) for a in hashes.values() for b in hashes.values() if a != b) > 12
    items = [(name, h) for name, h in hashes.items()] + [("copy", copy)]
    assert near_duplicates(items, 6) == {"copy": ("astronaut", distance(copy, hashes["astronaut"]))}


def test_histogram_without_matplotlib(tmp_path, monkeypatch):
    from megatron_emu3.curate.report import _histogram_png

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    _histogram_png({"kept": [0.1, 0.2, 0.5], "dropped": [0.9]}, "score", tmp_path / "h.png")
    assert Image.open(tmp_path / "h.png").size == (500, 300)


def test_clip_cut_between_keyframes_is_reencoded_with_its_frames(tmp_path):
    from megatron_emu3.curate.scenes import write_clip
    from megatron_emu3.curate.video import probe
    from tests.media_samples import pan_video

    source = pan_video(tmp_path / "v.mp4", "coffee", frames=16, cuts=("rocket",), keyframes_at_cuts=True)
    info = probe(source)
    assert info.keyframes == (0.0, 2.0)
    assert write_clip(source, tmp_path / "copy.mp4", 2.0, 4.0, info) == "copy"
    assert write_clip(source, tmp_path / "mid.mp4", 0.5, 2.0, info) == "reencode"
    assert write_clip(source, tmp_path / "late.mp4", 2.5, 4.0, info) == "reencode"  # seeks to the keyframe at 2 s
    copy, mid, late = (probe(tmp_path / f"{n}.mp4") for n in ("copy", "mid", "late"))
    assert (copy.frames, copy.seconds) == (16, 2.0) and (mid.frames, mid.seconds) == (12, 1.5)
    assert (late.frames, late.seconds) == (12, 1.5)
