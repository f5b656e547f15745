"""Interleaved documents: a `segments` manifest row (text, two pictures, a short video) -> one shard
document with several vision blocks -> decoded back segment by segment (tools/inspect_data.py) ->
packed whole into samples with per-token loss weights -> a training step at TP=2 x CP=2 equal to one
rank. A bad segment skips its row naming the segment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_emu3.data import documents, media
from megatron_emu3.config.schema import DataConfig, DataSource
from megatron_emu3.data.dataset import build_datasets
from megatron_emu3.data.tokens import EOV, SOV, DocKind
from megatron_emu3.preprocess import inspect
from megatron_emu3.preprocess.cli import main

from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import one_step
from tests.media_samples import pan_video, save_photo

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--min-pixels", "1024", "--max-pixels", str(64 * 64), "--video-min-pixels", "1024",
         "--video-max-pixels", str(64 * 64), "--no-progress", "--threads", "1"]
SEGMENTS = [{"text": "How to make coffee. First, look at the cat."}, {"image": "cat.jpg"},
            {"text": "Then read the recipe:"}, {"image": "page.png"}, {"text": "And watch the launch."},
            {"video": "pan.mp4"}, {"text": "Done."}]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, vq_dir):
    root = tmp_path_factory.mktemp("interleaved")
    save_photo(root / "cat.jpg", "chelsea")
    save_photo(root / "page.png", "page")
    pan_video(root / "pan.mp4", "rocket", frames=8, size=(64, 48))
    rows = [{"segments": SEGMENTS},
            {"segments": [{"text": "broken"}, {"image": "missing.png"}]},
            {"segments": [{"text": "only text"}]},
            {"segments": [{"text": "x"}, {"picture": "cat.jpg"}]},
            {"text": "a plain text document between them " * 8}]
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--input", str(manifest), "--output-prefix", str(root / "out" / "s"), "--vq-dir", str(vq_dir),
                 "--max-seq-len", "1024", *SMALL]) == 0
    return root, json.loads((root / "out" / "s_report.json").read_text())


def test_segments_row_becomes_one_document_and_bad_segments_are_named(shards, vision_tokenizer, text_tokenizer):
    root, report = shards
    assert report["documents_by_kind"]["interleaved"] == 1 and report["documents_written"] == 2
    skipped = {s["row"]: s for s in report["skipped"]}
    assert skipped[2]["field"] == "segments[1].image" and "does not exist" in skipped[2]["reason"]
    assert skipped[3]["field"] == "segments" and "no image or video segment" in skipped[3]["reason"]
    assert skipped[4]["field"] == "segments[1]" and "exactly one key" in skipped[4]["reason"]
    ids, kind = inspect.ShardSet(root / "out" / "s")[0]
    assert kind == DocKind.INTERLEAVED and (ids == SOV).sum() == (ids == EOV).sum() == 3
    segments = documents.parse_segments(ids, text_tokenizer)
    assert len(segments) == len(SEGMENTS)
    for seg, want in zip(segments, SEGMENTS):
        if "text" in want:
            assert seg.is_text and text_tokenizer.decode(seg.text_ids.tolist()) == want["text"]
        elif "image" in want:
            pixels = media.prepare_image(root / want["image"], 1024, 64 * 64)
            np.testing.assert_array_equal(seg.codes, vision_tokenizer.encode_images(pixels[None])[0])
        else:
            frames, _ = media.decode_video(root / want["video"], 8, 4, 1024, 64 * 64)
            np.testing.assert_array_equal(seg.codes, vision_tokenizer.encode_videos(media.to_pixel_values(frames)[None])[0])
            assert seg.meta.text() == "6*8*2 8fps 1.00s"


def test_inspect_decodes_every_segment(shards, vq_dir, tmp_path):
    root, _ = shards
    out = subprocess.run([sys.executable, str(REPO / "tools" / "inspect_data.py"), str(root / "out" / "s"),
                          "--decode", "0", "--vq-dir", str(vq_dir), "--out", str(tmp_path / "look")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "7 segments" in out.stdout and "segment 6: 'Done.'" in out.stdout
    record = json.loads((tmp_path / "look" / "doc_00000.json").read_text())
    kinds = [next(k for k in ("text", "image", "video") if k in seg) for seg in record["segments"]]
    assert kinds == [next(iter(s)) for s in SEGMENTS]
    files = [Path(seg.get("image") or seg.get("video")) for seg in record["segments"] if "text" not in seg]
    assert [f.suffix for f in files] == [".png", ".png", ".mp4"] and all(f.is_file() for f in files)


def test_packed_whole_with_loss_weights_and_trains_at_tp2_cp2(shards, tmp_path):
    root, _ = shards
    prefix = str(root / "out" / "s_00000")
    train, _ = build_datasets(DataConfig(sources=[DataSource(prefix)], split="100,0"), 512, 0, 4)
    doc_len = int(inspect.ShardSet(root / "out" / "s").lengths()[0])
    sample = next(train[i] for i in range(len(train)) if any(d == 0 for d, _, _ in train.pieces(i)))
    pieces = next(p for i in range(len(train)) for p in train.pieces(i) if p[0] == 0)
    assert pieces[1:] == (0, doc_len)  # the whole document, never split
    codes = sample["labels"] >= documents.tokens.FIRST_VISION_CODE
    assert np.allclose(sample["loss_weights"][codes], 0.5) and codes.sum() > 0
    overrides = ["data.source=shards", f"data.sources=[{{prefix: {prefix}, weight: 1.0}}]", "data.split='100,0'",
                 "data.seq_length=512", "data.micro_batch_size=1", "data.global_batch_size=2",
                 "optimizer.warmup_iters=0", "optimizer.lr=1e-4", "optimizer.min_lr=0",
                 "model.make_vocab_size_divisible_by=256"]
    init = str(tmp_path / "init.pt")
    (ref,) = run_ranks(1, one_step, overrides, None, init, timeout=400)
    for got in run_ranks(4, one_step, overrides + ["parallel.tp=2", "parallel.cp=2"], init, timeout=400):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=2e-6, rtol=1e-5, msg=f"grad of {name}")


def continue_interleaved(ckpt_dir: str, context: list[int]) -> dict:
    """In a spawned rank: greedily continue `context` with a caption and a 3x4 picture."""
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer
    from megatron_emu3.generation.api import continuation_prompt, decode, generate_vision, load_generator
    from megatron_emu3.generation.constraints import VisionGridLogitsProcessor, grid_length
    from megatron_emu3.generation.sampling import SamplingConfig
    from megatron_emu3.parallel.setup import destroy_distributed

    tokenizer, greedy = Emu3TextTokenizer.from_default(), SamplingConfig(top_k=1, guidance_scale=1.0)
    lm, _ = load_generator(checkpoint=ckpt_dir, max_length=512)  # the tiny model was saved at 64 tokens
    meta = documents.VisionMeta(3, 4)
    codes, ids = generate_vision(lm, tokenizer, "Finally, the result:", meta, greedy, context=context)
    prompt = continuation_prompt(context, "Finally, the result:", meta, tokenizer)
    plain = decode(lm, [prompt], grid_length(1, 3, 4), greedy, [VisionGridLogitsProcessor(len(prompt), 1, 3, 4)])[0]
    destroy_distributed()
    return {"codes": codes, "ids": ids, "plain": prompt + plain}


def test_generation_continues_an_interleaved_context(shards, tmp_path, text_tokenizer):
    from tests.generation.scenarios import make_checkpoint

    root, _ = shards
    ids, _ = inspect.ShardSet(root / "out" / "s")[0]
    ends = np.flatnonzero(ids == EOV)
    context = ids[: ends[1] + 1].tolist()  # text, picture, text, picture: cut between segments
    ckpt = str(tmp_path / "run" / "checkpoints")
    run_ranks(1, make_checkpoint, ckpt, timeout=300)
    (out,) = run_ranks(1, continue_interleaved, ckpt, context, timeout=300)
    assert out["ids"] == out["plain"] and out["ids"][: len(context)] == context
    segments = documents.parse_segments(out["ids"], text_tokenizer)
    assert len(segments) == 6 and text_tokenizer.decode(segments[4].text_ids.tolist()) == "Finally, the result:"
    assert segments[5].meta.text() == "3*4" and np.array_equal(segments[5].codes, out["codes"])
    assert out["codes"].shape == (3, 4) and out["ids"][-1] == documents.tokens.EOS


def test_interleaved_document_over_the_context_is_shrunk_not_dropped(shards, vq_dir, text_tokenizer):
    root, _ = shards
    natural = documents.parse_segments(inspect.ShardSet(root / "out" / "s")[0][0], text_tokenizer)
    full_len = len(inspect.ShardSet(root / "out" / "s")[0][0])
    limit = full_len - 60
    manifest = root / "one.jsonl"
    manifest.write_text(json.dumps({"segments": SEGMENTS}) + "\n")
    assert main(["--input", str(manifest), "--output-prefix", str(root / "tight" / "s"), "--vq-dir", str(vq_dir),
                 "--max-seq-len", str(limit), "--min-pixels", "256", "--max-pixels", str(64 * 64),
                 "--video-min-pixels", "256", "--video-max-pixels", str(64 * 64), "--no-progress", "--threads", "1"]) == 0
    report = json.loads((root / "tight" / "s_report.json").read_text())
    assert report["documents_written"] == 1 and report["resized_to_fit"]["interleaved"] == 1
    ids, _ = inspect.ShardSet(root / "tight" / "s")[0]
    assert full_len - 60 >= len(ids) > full_len - 120  # the largest common scale that fits, not far below
    shrunk = documents.parse_segments(ids, text_tokenizer)
    for small, big in zip(shrunk, natural):
        if not small.is_text:  # every block smaller, aspect ratio within a code
            assert small.codes.size < big.codes.size and small.codes.shape[:-2] == big.codes.shape[:-2]
            (h, w), (bh, bw) = small.codes.shape[-2:], big.codes.shape[-2:]
            assert abs(w / h - bw / bh) <= 1 / min(h, w) + 1 / min(bh, bw) + 0.35
    assert main(["--input", str(manifest), "--output-prefix", str(root / "tiny" / "s"), "--vq-dir", str(vq_dir),
                 "--max-seq-len", "40", *SMALL]) == 0
    report = json.loads((root / "tiny" / "s_report.json").read_text())
    assert report["skipped"][0]["field"] == "segments" and "even with every picture" in report["skipped"][0]["reason"]
