"""Bad shards and bad blends give errors that name the file / component and say what to do."""

import logging
import os

import numpy as np
import pytest

from megatron_emu3.config.schema import DataConfig, DataSource
from megatron_emu3.data.blend import BlendSpec, DataSourceSpec, normalise_weights, parse_split
from megatron_emu3.data.dataset import blend_spec_from_config, build_datasets, data_metrics
from megatron_emu3.data.shards import ShardSet
from megatron_emu3.data.tokens import VOCAB_SIZE, DocKind
from tests.data.shard_factory import generation_doc, random_shard, text_doc, write_shard


def one(prefix, **kw):
    return BlendSpec(sources=(DataSourceSpec((prefix,), 1.0),), split=(1.0, 0.0), **kw)


def test_missing_prefix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"shard '.*nothing' is missing .*nothing.idx, .*nothing.bin"):
        build_datasets(one(str(tmp_path / "nothing")), 16, 0, 4)


def test_missing_bin_file(tmp_path):
    prefix, _, _ = random_shard(str(tmp_path / "a"), 5)
    os.remove(prefix + ".bin")
    with pytest.raises(FileNotFoundError, match=r"a.bin; check the data source path or re-run tools/preprocess"):
        ShardSet(prefix)


def test_truncated_bin_and_idx(tmp_path):
    prefix, _, _ = random_shard(str(tmp_path / "a"), 5)
    size = os.path.getsize(prefix + ".bin")
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(size - 8)
    expected = rf"a.bin is incomplete or corrupt \({size - 8} bytes, the index says {size}\)"
    with pytest.raises(ValueError, match=expected):
        ShardSet(prefix)
    prefix, _, _ = random_shard(str(tmp_path / "b"), 5)
    with open(prefix + ".idx", "r+b") as f:
        f.truncate(os.path.getsize(prefix + ".idx") - 3)
    with pytest.raises(ValueError, match="b.idx is incomplete or corrupt"):
        ShardSet(prefix)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match="not a megatron-core index"):
        ShardSet(prefix)


@pytest.mark.parametrize("dtype", [np.uint16, np.int64])
def test_wrong_dtype(tmp_path, dtype):
    prefix = write_shard(str(tmp_path / "a"), [[1, 2, 3]], [0], dtype=dtype)
    with pytest.raises(ValueError, match=rf"stores tokens as {np.dtype(dtype).name}; Emu3 shards must be int32"):
        ShardSet(prefix)


def test_shard_without_kinds(tmp_path):
    prefix = write_shard(str(tmp_path / "a"), [[1, 2, 3]], [0], multimodal=False)
    with pytest.raises(ValueError, match="no per-document kinds"):
        ShardSet(prefix)


def test_unknown_kind(tmp_path):
    prefix = write_shard(str(tmp_path / "a"), [[1, 2], [3, 4]], [0, 9])
    with pytest.raises(ValueError, match="document 1 has kind 9, not a DocKind"):
        ShardSet(prefix)


def test_token_outside_vocabulary_found_at_open(tmp_path):
    prefix = write_shard(str(tmp_path / "a"), [[1, 2, 3], [4, VOCAB_SIZE + 5, 6]], [0, 0])
    with pytest.raises(ValueError, match=rf"a: document 1 holds token id {VOCAB_SIZE + 5}, outside the Emu3 vocab"):
        build_datasets(one(prefix), 16, 0, 4)


def test_token_outside_vocabulary_found_on_read(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    docs = [text_doc(rng, 5) for _ in range(60)]
    docs[30][2] = -7  # the open-time spot check (first, last, 16 random) may miss it; the read must not
    prefix = write_shard(str(tmp_path / "a"), docs, [0] * 60)
    monkeypatch.setattr(ShardSet, "spot_check", lambda self, *a, **k: None)
    train, _ = build_datasets(one(prefix), 16, 0, None)
    with pytest.raises(ValueError, match="document 30 holds token id -7"):
        for i in range(len(train)):
            train[i]


def test_oversize_vision_document_skip_counts_or_errors(tmp_path, caplog):
    rng = np.random.default_rng(0)
    docs = [text_doc(rng, 10), generation_doc(rng, 2, 8, 8), text_doc(rng, 100)]
    prefix = write_shard(str(tmp_path / "a"), docs, [DocKind.TEXT, DocKind.IMAGE_GENERATION, DocKind.TEXT])
    with caplog.at_level(logging.WARNING):
        train, _ = build_datasets(one(prefix, max_oversize_fraction=0.5), 32, 0, None)
    assert train.info["skipped_oversize_vision"] == {prefix: 1}
    assert data_metrics(train.info) == {"data_oversize_vision_skipped": 1, "data_oversize_vision_fraction": 1 / 3}
    with pytest.raises(ValueError, match=r"33.3% of its 3 documents, more than data.max_oversize_fraction=0.01\. "
                                         r"These shards were tokenized for a longer context.*--stage"):
        build_datasets(one(prefix), 32, 0, None)  # the default threshold refuses to start
    assert "1 vision document(s) longer than the window of 33 tokens (first:" in caplog.text
    assert "document 1, 85 tokens" in caplog.text
    with pytest.raises(ValueError, match="document 1, 85 tokens.*set data.oversize_vision=skip"):
        build_datasets(one(prefix, oversize_vision="error"), 32, 0, None)


def test_empty_blend_component(tmp_path):
    good, _, _ = random_shard(str(tmp_path / "good"), 10)
    empty = write_shard(str(tmp_path / "empty"), [], [])
    blend = BlendSpec(sources=(DataSourceSpec((good,), 0.5), DataSourceSpec((empty,), 0.5, "captions")),
                      split=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"blend component 'captions' has no documents"):
        build_datasets(blend, 64, 0, 4)
    with pytest.raises(ValueError, match="data.sources is empty"):
        blend_spec_from_config(DataConfig(sources=[]))
    with pytest.raises(FileNotFoundError, match="matches no '.idx' file"):
        build_datasets(DataConfig(sources=[DataSource(str(tmp_path / "none_*"))]), 64, 0, 4)


def test_component_with_no_training_documents(tmp_path):
    prefix, _, _ = random_shard(str(tmp_path / "a"), 1)
    with pytest.raises(ValueError, match="has no training documents"):
        build_datasets(BlendSpec(sources=(DataSourceSpec((prefix,), 1.0),), split=(0.2, 0.8)), 64, 0, 4)


def test_weights_and_split_validation():
    with pytest.raises(ValueError, match="has weight -1.0"):
        normalise_weights([1.0, -1.0], ["a", "b"])
    with pytest.raises(ValueError, match="sum to 0"):
        normalise_weights([0.0, 0.0], ["a", "b"])
    assert parse_split("98,2") == (0.98, 0.02) and parse_split("1") == (1.0, 0.0)
    with pytest.raises(ValueError, match="give train,valid parts"):
        parse_split("1,2,3")
    with pytest.raises(ValueError, match="oversize_vision='drop'"):
        build_datasets(BlendSpec(sources=(DataSourceSpec(("x",)),), oversize_vision="drop"), 8, 0, 1)
