"""Packing plan properties (pure numpy): whole vision documents, text labels once, bins within capacity."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_emu3.data.loss_weights import LossWeightTable
from megatron_emu3.data.packing import (assemble_sample, best_fit_decreasing, concat_plans, fill_gaps_with_text,
                                        pack_documents, split_documents)
from megatron_emu3.data.sample import check_sample, cu_seqlens_from_segments
from megatron_emu3.data.tokens import PAD, DocKind


@st.composite
def doc_mixes(draw):
    capacity = draw(st.integers(2, 300))
    n = draw(st.integers(1, 120))
    splittable = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    lengths = np.array([draw(st.integers(1, 3 * capacity)) if s else draw(st.integers(1, capacity))
                        for s in splittable], dtype=np.int64)
    window = draw(st.integers(1, 64))
    return capacity, lengths, splittable, window


@settings(max_examples=150, deadline=None)
@given(doc_mixes(), st.booleans())
def test_plan_places_every_document_whole_or_labels_once(mix, text_fill):
    capacity, lengths, splittable, window = mix
    ids = np.arange(100, 100 + len(lengths))  # plan keeps the ids it is given
    plan = pack_documents(ids, lengths, splittable, capacity, window, text_fill=text_fill)
    bin_of_piece = np.repeat(np.arange(len(plan)), np.diff(plan.sample_offsets))
    totals = np.bincount(bin_of_piece, weights=plan.piece_len, minlength=len(plan))
    assert totals.max() <= capacity and totals.min() > 0
    for pos, (length, split_ok) in enumerate(zip(lengths, splittable)):
        mine = plan.piece_doc == 100 + pos
        starts, lens = plan.piece_start[mine], plan.piece_len[mine].astype(np.int64)
        if not split_ok or (length <= capacity and not text_fill):
            # never split: one piece, the whole document
            assert starts.tolist() == [0] and lens.tolist() == [length]
            continue
        covered = np.zeros(length, dtype=np.int64)  # how often each token is a label inside a piece
        seen = np.zeros(length, dtype=np.int64)
        for s, n in zip(starts, lens):
            covered[s + 1:s + n] += 1
            seen[s:s + n] += 1
        assert covered[1:].tolist() == [1] * (length - 1)  # every label exactly once
        assert seen.min() == 1  # every token present
        assert np.all(lens >= 2) or length == 1
    n_items = len(split_documents(lengths, splittable, capacity)[0])
    if text_fill and window >= n_items:  # one packing window: while text-only bins remain, no bin with a
        # vision document keeps a gap >= 16 (filling works window by window)
        vision = np.bincount(bin_of_piece, weights=~np.isin(plan.piece_doc, ids[splittable]), minlength=len(plan)) > 0
        if np.any(~vision):
            assert np.all(capacity - totals[vision] < max(16, 2))


def test_text_fill_pours_text_into_gaps_beside_vision():
    # images of 7 in windows of 10 leave gaps of 3; a text document of 6 is poured in with one token
    # of overlap at each cut: tokens 0-2 | 2-4 | 4-5 (labels 1,2 | 3,4 | 5: each once)
    lengths, splittable = np.array([7, 7, 6]), np.array([False, False, True])
    pieces = split_documents(lengths, splittable, 10)
    doc_pos, start, length, bins = fill_gaps_with_text(*pieces, best_fit_decreasing(lengths, 10), splittable, 10,
                                                       min_gap=2)
    got = sorted(zip(doc_pos.tolist(), start.tolist(), length.tolist(), bins.tolist()))
    img0, img1 = (b for d, _, _, b in got if d < 2)
    assert got == [(0, 0, 7, img0), (1, 0, 7, img1), (2, 0, 3, img0), (2, 2, 3, img1), (2, 4, 2, 2)]
    # with plenty of text, the stage-1 case: no window beside an image keeps a gap of 16 or more
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(4170, 4191, 300), rng.integers(50, 3000, 600)])
    splittable = np.arange(900) >= 300
    whole = pack_documents(np.arange(900), lengths, splittable, 5121)
    filled = pack_documents(np.arange(900), lengths, splittable, 5121, text_fill=True)
    assert filled.pad_tokens(5121) < whole.pad_tokens(5121) / 10


def test_best_fit_decreasing_fills_the_tightest_bin():
    # capacity 10: 6 -> bin0 (4 left), 5 -> bin1 (5 left), 4 -> bin0 (exact fit, not bin1), 3, 2 -> bin1
    bins = best_fit_decreasing(np.array([6, 5, 4, 3, 2]), 10, window=100)
    assert bins.tolist() == [0, 1, 0, 1, 1]


def test_windows_pack_independently():
    lengths = np.array([6, 4, 6, 4])
    assert best_fit_decreasing(lengths, 10, window=2).tolist() == [0, 0, 1, 1]
    assert best_fit_decreasing(lengths, 10, window=1).tolist() == [0, 1, 2, 3]


def test_split_long_text_overlaps_by_one_token():
    pos, start, length = split_documents(np.array([12, 3]), np.array([True, True]), capacity=5)
    assert pos.tolist() == [0, 0, 0, 1]
    assert start.tolist() == [0, 4, 8, 0] and length.tolist() == [5, 5, 4, 3]
    # a tail that would be only the overlap token is not a piece
    pos, start, length = split_documents(np.array([9]), np.array([True]), capacity=5)
    assert start.tolist() == [0, 4] and length.tolist() == [5, 5]


def test_oversize_vision_document_is_rejected_by_the_packer():
    with pytest.raises(ValueError, match="vision document at position 1 has 9 tokens > window 5"):
        split_documents(np.array([3, 9]), np.array([True, False]), capacity=5)


def test_concat_plans_keeps_bins():
    a = pack_documents(np.arange(3), np.array([3, 3, 3]), np.zeros(3, bool), 5)
    b = pack_documents(np.arange(3, 5), np.array([5, 1]), np.zeros(2, bool), 5)
    both = concat_plans([a, b])
    assert len(both) == len(a) + len(b)
    assert both.pieces(len(a))[0].tolist() == b.pieces(0)[0].tolist()


@st.composite
def bins_of_pieces(draw):
    seq_len = draw(st.integers(1, 80))
    pieces, kinds, left = [], [], seq_len + 1
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    while left > 0 and draw(st.booleans()):
        n = draw(st.integers(1, left))
        tokens = rng.integers(0, 184622, n)
        pieces.append(tokens)
        kinds.append(draw(st.sampled_from(list(DocKind))))
        left -= n
    return seq_len, pieces, kinds


@settings(max_examples=150, deadline=None)
@given(bins_of_pieces(), st.sampled_from(["pretrain", "qft"]), st.sampled_from([0.5, 0.25, 1.0]))
def test_assembled_sample_positions_segments_and_pads(case, policy, vision_weight):
    seq_len, pieces, kinds = case
    table = LossWeightTable(policy, vision_weight)
    s = assemble_sample(pieces, kinds, seq_len, table)
    check_sample(s, seq_len)
    window = np.concatenate([s["tokens"], s["labels"][-1:]])
    used = sum(len(p) for p in pieces)
    if pieces:
        assert np.array_equal(window[:used], np.concatenate(pieces))
    assert np.all(window[used:] == PAD)
    np.testing.assert_array_equal(s["labels"][:-1], s["tokens"][1:])
    # position ids restart at every boundary and count up inside a segment
    cu = cu_seqlens_from_segments(s["segment_ids"])
    for lo, hi in zip(cu[:-1], cu[1:]):
        assert s["position_ids"][lo:hi].tolist() == list(range(hi - lo))
    # no weight where the label is in another segment, or is a pad
    crossing = np.append(s["segment_ids"][1:] != s["segment_ids"][:-1], False)
    assert np.all(s["loss_weights"][crossing] == 0)
    label_is_pad = np.arange(1, seq_len + 1) >= used
    assert np.all(s["loss_weights"][label_is_pad] == 0)
    window_segments = [len(p) for p in pieces] + ([seq_len + 1 - used] if used < seq_len + 1 else [])
    assert len(cu) - 1 == len(window_segments) - (window_segments[-1] == 1)  # the last token is not an input
