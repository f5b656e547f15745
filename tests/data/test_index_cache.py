"""The index is built once (by the builder rank), published atomically, and loaded memory-mapped."""

import os

import numpy as np
import pytest

from megatron_emu3.data import index_cache
from tests.distributed.launcher import run_ranks


def test_build_once_then_load(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(5), "b": np.ones((2, 3), np.float32)}, {"note": "x"}

    desc = {"seq_len": 8, "shards": ["s"]}
    arrays, meta = index_cache.load_or_build(str(tmp_path), "idx", desc, build)
    again, meta2 = index_cache.load_or_build(str(tmp_path), "idx", desc, build)
    assert len(calls) == 1 and isinstance(again["a"], np.memmap)
    np.testing.assert_array_equal(again["b"], np.ones((2, 3)))
    assert meta2["info"]["note"] == "x" and meta2["description"] == desc
    index_cache.load_or_build(str(tmp_path), "idx", dict(desc, seq_len=9), build)
    assert len(calls) == 2  # another description is another index
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(index_cache.cache_path(str(tmp_path), "idx", d)) for d in (desc, dict(desc, seq_len=9)))


def test_failed_build_leaves_nothing(tmp_path):
    def build():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        index_cache.load_or_build(str(tmp_path), "idx", {"k": 1}, build)
    assert os.listdir(tmp_path) == []


def test_non_builder_without_an_index_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="Is the cache directory shared by all ranks"):
        index_cache.load_or_build(str(tmp_path), "idx", {"k": 1}, lambda: ({}, {}), is_builder=False)


def _two_ranks(root):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    built = []

    def build():
        built.append(dist.get_rank())
        return {"order": np.random.default_rng(0).permutation(100)}, {}

    arrays, _ = index_cache.load_or_build(root, "idx", {"k": 2}, build)
    result = (dist.get_rank(), built, np.asarray(arrays["order"]).tolist())
    dist.destroy_process_group()
    return result


def test_rank_zero_builds_and_the_other_rank_loads(tmp_path):
    results = run_ranks(2, _two_ranks, str(tmp_path), timeout=120)
    assert results[0][1] == [0] and results[1][1] == []
    assert results[0][2] == results[1][2]
