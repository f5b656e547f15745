"""Context parallelism end to end: CP=2, CP=4 and TP=2 x CP=2 with and without sequence parallelism
(ring attention over the zigzag split, packed multi-document samples from shards) give the loss and every gradient of one rank from the same
weights and batch (loss rel 1e-6, gradients atol 2e-6, fp32 on CPU). The Transformer Engine path
(THD micro-batches, every document padded to 2*cp and split per document, megatron-core's THD RoPE)
does too, with a reference THD attention standing in for TE's CUDA kernel."""

from __future__ import annotations

import pytest
import torch

from tests.data.shard_factory import random_shard
from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import one_step, one_step_te_reference


@pytest.fixture(scope="module")
def shard_overrides(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    random_shard(str(root / "mixed"), 120, kinds=(0, 1, 2), seed=7)
    return ["data.source=shards", f"data.sources=[{{prefix: {root / 'mixed'}, weight: 1.0}}]",
            "data.seq_length=128", "data.micro_batch_size=2", "data.global_batch_size=4",
            "optimizer.warmup_iters=0", "optimizer.lr=1e-4", "optimizer.min_lr=0",
            # the same padded vocabulary (184,832 rows) at TP 1 and TP 2: padding logits are in the softmax
            "model.make_vocab_size_divisible_by=256"]


@pytest.fixture(scope="module")
def reference(shard_overrides, tmp_path_factory):
    init = str(tmp_path_factory.mktemp("ref") / "init.pt")
    (result,) = run_ranks(1, one_step, shard_overrides, None, init)
    return init, result


def _assert_close(ref: dict, got: dict) -> None:
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    for name, g in ref["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, atol=2e-6, rtol=1e-5, msg=f"grad of {name}")


@pytest.mark.parametrize("world,layout", [(2, ["parallel.cp=2"]), (4, ["parallel.cp=4"]),
                                          (4, ["parallel.cp=2", "parallel.tp=2"]),
                                          (4, ["parallel.cp=2", "parallel.tp=2", "parallel.sequence_parallel=true"])])
def test_context_parallel_matches_single_rank(shard_overrides, reference, world, layout):
    init, ref = reference
    results = run_ranks(world, one_step, shard_overrides + layout, init, timeout=400)
    for got in results:
        _assert_close(ref, got)


@pytest.mark.parametrize("world,layout", [(1, []), (2, ["parallel.cp=2"]),
                                          (4, ["parallel.cp=2", "parallel.tp=2", "parallel.sequence_parallel=true"])])
def test_transformer_engine_thd_layout_matches_single_rank(shard_overrides, reference, world, layout):
    init, ref = reference
    results = run_ranks(world, one_step_te_reference, shard_overrides + layout, init, timeout=400)
    for got in results:
        _assert_close(ref, got)
