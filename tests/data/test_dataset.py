"""PackedDataset on real shard files: every document once per epoch, vision blocks whole, caching."""

import logging
import os
import tempfile
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_emu3.data import dataset as dataset_module
from megatron_emu3.data.blend import BlendSpec, DataSourceSpec
from megatron_emu3.data.dataset import build_datasets
from megatron_emu3.data.sample import check_sample
from megatron_emu3.data.shards import ShardSet
from megatron_emu3.data.tokens import EOV, SOV, DocKind
from tests.data.shard_factory import random_shard


def spec(*sources, split=(1.0, 0.0), **kw):
    # these tests drop many oversize documents on purpose: the refusal threshold is tested in test_bad_inputs
    kw.setdefault("max_oversize_fraction", 1.0)
    return BlendSpec(sources=tuple(DataSourceSpec((p,), w) for p, w in sources), split=split, **kw)


def epoch_pieces(ds, epoch):
    """doc -> list of (start, length, sample) over the samples of one epoch."""
    out = defaultdict(list)
    for i in range(int(ds.epoch_offsets[epoch]), int(ds.epoch_offsets[epoch + 1])):
        for doc, start, length in ds.pieces(i):
            out[doc].append((start, length, i))
    return out


def assert_epoch_exactly_once(ds, docs, kinds, seq_len, epoch, text_fill=False):
    pieces = epoch_pieces(ds, epoch)
    oversize = {d for d, doc in enumerate(docs) if kinds[d] != DocKind.TEXT and len(doc) > seq_len + 1}
    assert sorted(pieces) == sorted(set(range(len(docs))) - oversize)
    for d in pieces:
        doc = docs[d]
        if kinds[d] != DocKind.TEXT or (len(doc) <= seq_len + 1 and not text_fill):
            assert [(s, n) for s, n, _ in pieces[d]] == [(0, len(doc))], f"document {d} split or repeated"
            continue
        labels = np.zeros(len(doc), dtype=int)
        for start, length, _ in pieces[d]:
            labels[start + 1:start + length] += 1
        assert labels[1:].tolist() == [1] * (len(doc) - 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(8, 96), st.integers(5, 60), st.booleans())
def test_each_document_once_per_epoch_and_samples_hold_its_tokens(seed, seq_len, n_docs, text_fill):
    with tempfile.TemporaryDirectory() as d:
        prefix, docs, kinds = random_shard(os.path.join(d, "mix"), n_docs, kinds=tuple(DocKind), seed=seed)
        keep = [i for i in range(n_docs) if kinds[i] == DocKind.TEXT or len(docs[i]) <= seq_len + 1]
        if not keep:
            return
        train, valid = build_datasets(spec((prefix, 1.0), text_fill=text_fill), seq_len, seed % 1000,
                                      train_samples=None)
        assert valid is None and train.info["epochs"] == 1
        assert train.info["skipped_oversize_vision"][prefix] == n_docs - len(keep)
        kept_docs = {d_: docs[d_] for d_ in keep}
        pieces = epoch_pieces(train, 0)
        assert sorted(pieces) == keep  # skipped documents are exactly the oversize vision ones
        assert_epoch_exactly_once(train, docs, kinds, seq_len, 0, text_fill)
        used = sum(n for i in range(len(train)) for _, _, n in train.pieces(i))
        assert train.info["pad_tokens"] == len(train) * (seq_len + 1) - used
        assert train.info["pad_fraction"] == pytest.approx(train.info["pad_tokens"] / (len(train) * (seq_len + 1)))
        for i in range(len(train)):
            s = train[i]
            check_sample(s, seq_len)
            window = np.concatenate([s["tokens"], s["labels"][-1:]])
            at = 0
            for doc, start, length in train.pieces(i):
                np.testing.assert_array_equal(window[at:at + length], kept_docs[doc][start:start + length])
                piece = window[at:at + length]
                # a vision block is whole inside its piece: as many SOV as EOV, SOV first
                assert (piece == SOV).sum() == (piece == EOV).sum()
                at += length


def test_epochs_cover_all_documents_in_a_new_order(tmp_path):
    prefix, docs, kinds = random_shard(str(tmp_path / "a"), 40, kinds=(0, 1, 2), seed=3, scale=2)
    seq_len = 64  # some text documents are longer (split), some vision ones too (skipped)
    train, _ = build_datasets(spec((prefix, 1.0)), seq_len, seed=5, train_samples=1)
    assert train.info["skipped_oversize_vision"][prefix] > 0
    one_epoch = len(train)
    train, _ = build_datasets(spec((prefix, 1.0)), seq_len, seed=5, train_samples=2 * one_epoch + 1)
    assert train.info["epochs"] == 3 and len(train) >= 2 * one_epoch + 1
    for e in range(3):
        assert_epoch_exactly_once(train, docs, kinds, seq_len, e)
    first = [train.pieces(i) for i in range(int(train.epoch_offsets[1]))]
    second = [train.pieces(i) for i in range(int(train.epoch_offsets[1]), int(train.epoch_offsets[2]))]
    assert first != second
    assert train.epoch_of(int(train.epoch_offsets[1])) == 1


def test_order_is_a_function_of_the_seed_only(tmp_path):
    prefix, _, _ = random_shard(str(tmp_path / "a"), 50, seed=1)
    a, _ = build_datasets(spec((prefix, 1.0)), 48, seed=7, train_samples=30)
    b, _ = build_datasets(spec((prefix, 1.0), cache_dir=str(tmp_path / "other_cache")), 48, seed=7, train_samples=30)
    c, _ = build_datasets(spec((prefix, 1.0)), 48, seed=8, train_samples=30)
    for i in range(30):
        for key in a[i]:
            np.testing.assert_array_equal(a[i][key], b[i][key])
    assert any(a.pieces(i) != c.pieces(i) for i in range(30))


def test_index_is_built_once_and_memory_mapped(tmp_path, monkeypatch):
    prefix, _, _ = random_shard(str(tmp_path / "a"), 30, seed=2)
    first, _ = build_datasets(spec((prefix, 1.0)), 32, seed=1, train_samples=20)
    assert os.path.isdir(first.info["cache"]) and first.info["cache"].startswith(str(tmp_path / "index_cache"))

    def fail(*a, **k):
        raise AssertionError("the plan was rebuilt although it is cached")

    monkeypatch.setattr(dataset_module, "build_plan", fail)
    again, _ = build_datasets(spec((prefix, 1.0)), 32, seed=1, train_samples=20)
    assert isinstance(again.sample_order, np.memmap)
    np.testing.assert_array_equal(again.sample_order, first.sample_order)
    with pytest.raises(AssertionError, match="rebuilt"):  # another seq_len is another index
        build_datasets(spec((prefix, 1.0)), 40, seed=1, train_samples=20)


def test_train_valid_split_is_disjoint_and_independent_of_the_seed(tmp_path):
    prefix, _, _ = random_shard(str(tmp_path / "a"), 200, kinds=(0,), seed=4)
    docs = {}
    for seed in (1, 2):
        train, valid = build_datasets(spec((prefix, 1.0), split=(0.8, 0.2)), 32, seed, None, None)
        docs[seed] = [{d for i in range(len(ds)) for d, _, _ in ds.pieces(i)} for ds in (train, valid)]
        assert not docs[seed][0] & docs[seed][1]
        assert len(docs[seed][1]) == 40 and len(docs[seed][0]) == 160
    assert docs[1] == docs[2]


def test_recipe_sources_with_globs_relative_paths_and_vars(tmp_path, monkeypatch):
    """Typed sources from a recipe: globs, a prefix relative to the recipe, ${VARS} in path fields."""
    from megatron_emu3.config.loading import resolve_config

    for i in range(3):
        random_shard(str(tmp_path / f"img_{i}"), 10, kinds=(1,), seed=i)
    random_shard(str(tmp_path / "text"), 20, kinds=(0,), seed=9)
    monkeypatch.setenv("EMU3_TEST_DATA", str(tmp_path))
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text("data:\n  source: shards\n  split: '90,10'\n  vision_loss_weight: 0.25\n"
                      "  cache_dir: ${EMU3_TEST_DATA}/cache\n  sources:\n"
                      "    - {prefix: '${EMU3_TEST_DATA}/img_*', weight: 0.7}\n"
                      "    - {prefix: ../text, weight: 0.3, name: web}\n")
    cfg = resolve_config(str(recipe))
    assert cfg.data.sources[1].prefix == str(recipe.parent / "../text") and cfg.data.sources[1].name == "web"
    assert cfg.data.cache_dir == f"{tmp_path}/cache"
    train, valid = build_datasets(cfg.data, 64, seed=0, train_samples=10, valid_samples=2)
    assert len(train.corpus.shards) == 4 and train.table.vision_loss_weight == 0.25
    assert valid is not None and len(valid) >= 2
    assert "web" in train.info["skipped_oversize_vision"]


def test_unknown_source_key_names_the_source(tmp_path):
    from megatron_emu3.config.loading import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=r"unknown config key 'data.sources\[1\].wieght'"):
        resolve_config(None, ["data.sources=[{prefix: a}, {prefix: b, wieght: 2}]"])
    with pytest.raises(ConfigError, match=r"data.sources\[0\] \(from command line\): expected a mapping"):
        resolve_config(None, ["data.sources=[a_prefix]"])


def test_reads_agree_with_megatron_core(tmp_path):
    prefix, docs, kinds = random_shard(str(tmp_path / "a"), 25, seed=6)
    mine, theirs = ShardSet(prefix), IndexedDataset(prefix, multimodal=True)
    assert mine.kinds.tolist() == theirs.index.sequence_modes.tolist() == [int(k) for k in kinds]
    for i in range(25):
        np.testing.assert_array_equal(mine.read(i), theirs[i][0])
        np.testing.assert_array_equal(mine.read(i, 2, 3), theirs.get(i, 2, 3)[0])


def test_weights_that_do_not_sum_to_one_are_normalised_with_a_warning(tmp_path, caplog):
    a, _, _ = random_shard(str(tmp_path / "a"), 20, kinds=(0,), seed=1)
    b, _, _ = random_shard(str(tmp_path / "b"), 20, kinds=(1,), seed=2)
    with caplog.at_level(logging.WARNING):
        build_datasets(spec((a, 3.0), (b, 1.0)), 64, seed=0, train_samples=5)
    assert "sum to 4, not 1: normalised to [0.75, 0.25]" in caplog.text


def test_pickles_small_and_reopens_the_maps(tmp_path):
    import pickle

    prefix, _, _ = random_shard(str(tmp_path / "a"), 200, seed=8, scale=3)
    train, _ = build_datasets(spec((prefix, 1.0)), 64, seed=1, train_samples=50)
    blob = pickle.dumps(train)
    assert len(blob) < os.path.getsize(prefix + ".bin") // 4
    clone = pickle.loads(blob)
    for i in (0, 17, len(train) - 1):
        for key, value in train[i].items():
            np.testing.assert_array_equal(clone[i][key], value)


def test_rewritten_shard_gets_a_new_index(tmp_path):
    prefix, _, _ = random_shard(str(tmp_path / "a"), 30, kinds=(0,), seed=1)
    first, _ = build_datasets(spec((prefix, 1.0)), 32, seed=1, train_samples=5)
    random_shard(prefix, 30, kinds=(0,), seed=2)  # same path, new content
    second, _ = build_datasets(spec((prefix, 1.0)), 32, seed=1, train_samples=5)
    assert first.info["cache"] != second.info["cache"]


def test_split_does_not_move_when_seq_len_changes_what_fits(tmp_path):
    prefix, docs, kinds = random_shard(str(tmp_path / "a"), 150, kinds=(0, 1), seed=3, scale=2)
    valid_docs = {}
    for seq_len in (40, 400):
        _, valid = build_datasets(spec((prefix, 1.0), split=(0.7, 0.3)), seq_len, 0, None, None)
        valid_docs[seq_len] = {d for i in range(len(valid)) for d, _, _ in valid.pieces(i)}
    assert valid_docs[40] < valid_docs[400]  # the short window only drops the oversize images
    dropped = valid_docs[400] - valid_docs[40]
    assert dropped and all(kinds[d] == 1 and len(docs[d]) > 41 for d in dropped)
