"""Any vision tokenizer: a second random Emu3VQVAE with other factors (4x spatial, 2x temporal) and a
larger codebook (40,960 codes, ids past Emu3's vocabulary) writes shards whose records name it and its
id layout, that decode back exactly, and that train once model.vocab_size covers them; blending them
with Emu3-layout shards is refused naming both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_emu3.data import documents, media
from megatron_emu3.config.schema import DataConfig, DataSource
from megatron_emu3.data.dataset import build_datasets
from megatron_emu3.data.tokens import EMU3_VISION, FIRST_CODE_ID
from megatron_emu3.preprocess import inspect
from megatron_emu3.preprocess.cli import main

from tests.media_samples import pan_video, save_photo

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--min-pixels", "1024", "--max-pixels", str(64 * 64), "--video-min-pixels", "1024",
         "--video-max-pixels", str(64 * 64), "--no-progress", "--threads", "1"]
CODES = 40_960


@pytest.fixture(scope="module")
def second_vq(tmp_path_factory):
    from megatron_emu3.data.vision_tokenizer import load_vision_tokenizer, save_tiny_vq

    path = save_tiny_vq(tmp_path_factory.mktemp("vq2") / "vq", seed=5, codebook_size=CODES, spatial_factor=4,
                        temporal_factor=2)
    return path, load_vision_tokenizer(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    save_photo(root / "cat.jpg", "chelsea")
    save_photo(root / "page.png", "page")
    pan_video(root / "pan.mp4", "rocket", frames=6, size=(64, 48))
    rows = [{"text": "a cat", "image": "cat.jpg"}, {"text": "a printed page", "image": "page.png", "task": "understanding"},
            {"text": "a rocket, filmed", "video": "pan.mp4"}, {"text": "plain text " * 40}]
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, rows


def test_second_tokenizer_shards_name_their_layout_and_decode(tmp_path, corpus, second_vq, text_tokenizer):
    manifest, rows = corpus
    vq_dir, vq = second_vq
    assert vq.layout.ids() == (FIRST_CODE_ID, CODES, 4, 2) and vq.layout.vocab_size > EMU3_VISION.vocab_size
    assert main(["--input", str(manifest), "--output-prefix", str(tmp_path / "s"), "--vq-dir", str(vq_dir), *SMALL]) == 0
    report = json.loads((tmp_path / "s_report.json").read_text())
    assert report["documents_written"] == 4 and report["vision_layout"] == vq.layout.record()
    assert vq_dir.name in report["vision_layout"]["tokenizer"]
    shards = inspect.ShardSet(tmp_path / "s")
    assert shards.layout == vq.layout
    image = documents.parse(shards[0][0], text_tokenizer, vq.layout)
    photo = media.load_image(manifest.parent / "cat.jpg")  # 451x300, sized in multiples of 4, not Emu3's 8
    h, w = media.smart_resize(photo.height, photo.width, factor=4, min_pixels=1024, max_pixels=64 * 64)
    assert (h, w) == (52, 76) and image.codes.shape == (13, 19)
    pixels = media.to_pixel_values(np.asarray(media.resize_to(photo, h, w)))
    np.testing.assert_array_equal(image.codes, vq.encode_images(pixels[None])[0])
    video = documents.parse(shards[2][0], text_tokenizer, vq.layout)
    assert video.codes.shape == (3, 12, 16) and video.meta.text() == "12*16*3 8fps 0.75s"  # 6 frames / 2
    with pytest.raises(documents.DocumentFormatError, match="not a vision code"):
        documents.parse(shards[0][0], text_tokenizer)  # read as Emu3 ids, codes past 184,621 are not codes
    rec = inspect.decode_document(shards, 2, text_tokenizer, vq, tmp_path / "look", video_format="gif")
    assert rec["codes_shape"] == [3, 12, 16]
    from PIL import Image

    assert Image.open(rec["media"]).n_frames == 6


def test_blending_two_layouts_is_refused_and_model_vocab_is_checked(tmp_path, corpus, second_vq, vq_dir):
    manifest, _ = corpus
    vq2_dir, vq2 = second_vq
    for name, directory in (("emu3", vq_dir), ("other", vq2_dir)):
        assert main(["--input", str(manifest), "--output-prefix", str(tmp_path / name / "s"), "--vq-dir",
                     str(directory), *SMALL]) == 0
    spec = DataConfig(sources=[DataSource(str(tmp_path / "emu3" / "s_*")), DataSource(str(tmp_path / "other" / "s_*"))],
                      split="1", max_oversize_fraction=1.0)
    with pytest.raises(ValueError, match=r"different vision token layouts: .*emu3/s_00000 has Emu3VQVAE vq .*32,768 "
                                         r"codes.*8x spatial.*other/s_00000 has Emu3VQVAE vq .*40,960 codes.*4x spatial"):
        build_datasets(spec, 256, 0, 4)
    # the second layout's shards train, once the model's vocabulary covers their ids
    base = [sys.executable, "-m", "megatron_emu3.train", "--config", str(REPO / "examples/recipes/tiny.yaml"),
            "data.source=shards", f"data.sources=[{{prefix: {tmp_path / 'other' / 's_*'}, weight: 1.0}}]",
            "data.split='100,0'", "data.seq_length=1024", "data.global_batch_size=2", "data.micro_batch_size=1",
            "train.iters=2", "optimizer.warmup_iters=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run(base + [f"run_dir={tmp_path / 'run0'}"], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env=env)
    assert refused.returncode != 0
    assert f"set model.vocab_size={vq2.layout.vocab_size}" in refused.stdout + refused.stderr
    assert not (tmp_path / "run0").exists()  # refused before the model was built
    trained = subprocess.run(base + [f"run_dir={tmp_path / 'run'}", f"model.vocab_size={vq2.layout.vocab_size}"],
                             cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    assert records[0]["vision_loss"] is not None  # the 40,960-code ids count as vision tokens
    assert records[0]["data_oversize_vision_skipped"] == 0 and "data_oversize_vision_skipped" not in records[1]
    # generation from that model draws the second tokenizer's codes and decodes them with it
    gen = subprocess.run([sys.executable, str(REPO / "tools" / "generate.py"), "--checkpoint",
                          str(tmp_path / "run" / "checkpoints"), "--vq-dir", str(vq2_dir), "--prompt", "a cat",
                          "--height", "3", "--width", "4", "--cfg", "1.0", "--out", str(tmp_path / "gen.png"),
                          "--save-tokens", str(tmp_path / "gen.json")], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert gen.returncode == 0, gen.stderr[-3000:]
    from PIL import Image

    assert Image.open(tmp_path / "gen.png").size == (16, 12)  # 4x spatial: 4 x 3 codes -> 16 x 12 pixels
    ids = json.loads((tmp_path / "gen.json").read_text())["ids"]
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer

    codes = documents.parse(ids, Emu3TextTokenizer.from_default(), vq2.layout).codes
    assert codes.shape == (3, 4) and codes.max() < CODES
