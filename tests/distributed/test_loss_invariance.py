"""The loss of a global batch is sum(w * CE) / sum(w) over all of it: running the same 8 samples of
packed shards (text weight 1, vision 0.5, pads 0) as 1x8, 4x2 or 8x1 micro-batches, or over 2
data-parallel ranks, gives the same loss (rel 1e-6) and the same gradients (atol 2e-6)."""

from __future__ import annotations

import pytest
import torch

from tests.data.shard_factory import random_shard
from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import one_step


@pytest.fixture(scope="module")
def shard_overrides(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    random_shard(str(root / "mixed"), 120, kinds=(0, 1, 2), seed=3)
    return ["data.source=shards", f"data.sources=[{{prefix: {root / 'mixed'}, weight: 1.0}}]",
            "data.seq_length=128", "data.global_batch_size=8", "optimizer.warmup_iters=0",
            "optimizer.lr=1e-4", "optimizer.min_lr=0"]


@pytest.fixture(scope="module")
def reference(shard_overrides, tmp_path_factory):
    init = str(tmp_path_factory.mktemp("ref") / "init.pt")
    (result,) = run_ranks(1, one_step, shard_overrides + ["data.micro_batch_size=8"], None, init)
    return init, result


@pytest.mark.parametrize("world,micro", [(1, 1), (1, 4), (2, 2), (2, 4)])
def test_same_loss_and_grads_however_the_batch_is_cut(shard_overrides, reference, world, micro):
    init, ref = reference
    results = run_ranks(world, one_step, shard_overrides + [f"data.micro_batch_size={micro}"], init)
    for got in results:
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=2e-6, rtol=1e-5, msg=f"grad of {name}")
