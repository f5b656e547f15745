"""Document layouts (exact token structure) and parse(format(x)) == x for every kind."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_emu3.data import documents, tokens
from megatron_emu3.data.documents import DocumentFormatError, VisionMeta
from megatron_emu3.data.tokens import DocKind

V = tokens.FIRST_VISION_CODE


def test_image_generation_layout_exact(text_tokenizer):
    caption = text_tokenizer.encode("a cat")
    codes = np.array([[0, 1, 2], [3, 4, 32767]])
    doc = documents.format_image(caption, codes, text_tokenizer)
    meta = text_tokenizer.encode("2*3")
    expected = [tokens.BOS, *caption, tokens.SOV, *meta, tokens.SOT, V, V + 1, V + 2, tokens.EOL,
                V + 3, V + 4, V + 32767, tokens.EOL, tokens.EOF, tokens.EOV, tokens.EOS]
    assert doc.tolist() == expected
    assert documents.vision_document_length(len(caption), len(meta), 1, 2, 3) == len(expected)


def test_understanding_puts_caption_after_the_vision_block(text_tokenizer):
    caption = text_tokenizer.encode("a dog")
    doc = documents.format_image(caption, np.zeros((1, 1), int), text_tokenizer, understanding=True)
    assert doc[:2].tolist() == [tokens.BOS, tokens.SOV]
    assert doc[-len(caption) - 2:].tolist() == [tokens.EOV, *caption, tokens.EOS]


def test_video_layout_and_meta(text_tokenizer):
    codes = np.arange(2 * 2 * 2).reshape(2, 2, 2)
    doc = documents.format_video(text_tokenizer.encode("moving"), codes, fps=8, tokenizer=text_tokenizer)
    assert (doc == tokens.EOF).sum() == 2 and (doc == tokens.EOL).sum() == 4
    parsed = documents.parse(doc, text_tokenizer)
    assert parsed.meta.text() == "2*2*2 8fps 1.00s"
    assert parsed.meta == VisionMeta(2, 2, 2, 8.0, 1.0)
    np.testing.assert_array_equal(parsed.codes, codes)


@pytest.mark.parametrize("kind", list(DocKind))
def test_parse_round_trip_every_kind(text_tokenizer, kind):
    rng = np.random.default_rng(int(kind))
    text = text_tokenizer.encode(f"caption of kind {kind.name} — 多语言 ok")
    if kind == DocKind.TEXT:
        parsed = documents.parse(documents.format_text(text), text_tokenizer)
        assert parsed.kind == DocKind.TEXT and parsed.text_ids.tolist() == text and parsed.codes is None
        return
    if kind == DocKind.INTERLEAVED:  # text, image, text, video: parsed back segment by segment
        segs = [documents.Segment(text_ids=np.asarray(text)),
                documents.Segment(meta=VisionMeta(4, 5), codes=rng.integers(0, tokens.NUM_VISION_CODES, (4, 5))),
                documents.Segment(text_ids=np.asarray(text[:3])),
                documents.Segment(meta=VisionMeta(2, 3, 2, 8.0, 1.0),
                                  codes=rng.integers(0, tokens.NUM_VISION_CODES, (2, 2, 3)))]
        parsed = documents.parse_segments(documents.format_interleaved(segs, text_tokenizer), text_tokenizer)
        assert len(parsed) == 4 and parsed[0].text_ids.tolist() == text and parsed[2].text_ids.tolist() == text[:3]
        for got, want in ((parsed[1], segs[1]), (parsed[3], segs[3])):
            assert got.meta == want.meta
            np.testing.assert_array_equal(got.codes, want.codes)
        return
    video = kind in (DocKind.VIDEO_GENERATION, DocKind.VIDEO_UNDERSTANDING)
    codes = rng.integers(0, tokens.NUM_VISION_CODES, size=(3, 4, 5) if video else (4, 5))
    meta = VisionMeta(4, 5, 3, 7.5, 1.6) if video else VisionMeta(4, 5)
    doc = documents.format_vision(kind, text, codes, meta, text_tokenizer)
    parsed = documents.parse(doc, text_tokenizer)
    assert parsed.kind == kind
    assert parsed.text_ids.tolist() == text
    assert parsed.meta == meta
    np.testing.assert_array_equal(parsed.codes, codes)


def test_meta_text_forms():
    assert VisionMeta(64, 64).text() == "64*64"
    assert VisionMeta(30, 40, 4, 29.97, 0.53).text() == "30*40*4 29.97fps 0.53s"
    assert VisionMeta.parse("30*40*4 29.97fps 0.53s") == VisionMeta(30, 40, 4, 29.97, 0.53)
    with pytest.raises(DocumentFormatError, match="neither"):
        VisionMeta.parse("64x64")


def test_malformed_documents_are_rejected_with_a_location(text_tokenizer):
    good = documents.format_image([32], np.zeros((2, 2), int), text_tokenizer)
    with pytest.raises(DocumentFormatError, match="BOS"):
        documents.parse(good[1:], text_tokenizer)
    broken = good.copy()
    broken[np.flatnonzero(broken == tokens.EOL)[0]] = V
    with pytest.raises(DocumentFormatError, match="row 0 of latent frame 0"):
        documents.parse(broken, text_tokenizer)
    short = np.delete(good, np.flatnonzero(good == tokens.EOF))
    with pytest.raises(DocumentFormatError, match="needs"):
        documents.parse(short, text_tokenizer)
    with pytest.raises(DocumentFormatError, match="outside"):
        documents.parse(np.array([tokens.BOS, V, tokens.EOS]), text_tokenizer)


def test_format_checks_its_inputs(text_tokenizer):
    with pytest.raises(ValueError, match="codes must lie"):
        documents.format_image([1], np.full((1, 1), tokens.NUM_VISION_CODES), text_tokenizer)
    with pytest.raises(ValueError, match="do not match"):
        documents.format_vision(DocKind.IMAGE_GENERATION, [1], np.zeros((2, 2), int), VisionMeta(3, 2),
                                text_tokenizer)
