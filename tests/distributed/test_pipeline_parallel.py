"""Pipeline parallelism through megatron-core's schedules against one rank, same weights, same global
batch: 1F1B (PP=2, 4 micro-batches), interleaved virtual stages, an uneven split, and PP combined
with TP, CP and DP with the distributed optimizer. Tolerances as in test_parallel_equivalence.py."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import one_step

SMALL = ["model.vocab_size=512", "data.synthetic_vocab=64", "data.seq_length=32", "optimizer.warmup_iters=0",
         "optimizer.lr=1e-4", "optimizer.min_lr=0", "model.num_layers=4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    init = str(tmp_path_factory.mktemp("ref") / "init.pt")
    (result,) = run_ranks(1, one_step, SMALL, None, init)
    return init, result


def _assert_close(ref: dict, got: dict, grads: bool = True) -> None:
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert set(got["params"]) == set(ref["params"])
    if grads:
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=2e-6, rtol=1e-5, msg=f"grad of {name}")
    for name, p in ref["params"].items():
        torch.testing.assert_close(got["params"][name], p, atol=2e-6, rtol=1e-5, msg=f"param {name}")


@pytest.mark.parametrize("ranks,layout", [
    (2, ["parallel.pp=2", "data.global_batch_size=8", "data.micro_batch_size=2"]),
    (2, ["parallel.pp=2", "parallel.vpp=2"]),
    (2, ["parallel.pp=2", "parallel.first_stage_layers=1"]),
    (4, ["parallel.pp=2", "parallel.tp=2", "parallel.sequence_parallel=true"]),
    (4, ["parallel.pp=2", "parallel.cp=2"]),
    (2, ["parallel.pp=2", "parallel.recompute=full"]),
], ids=["1f1b", "interleaved", "uneven_1_3", "pp2xtp2_sp", "pp2xcp2", "recompute_full"])
def test_pipeline_matches_single_rank(reference, ranks, layout):
    init, ref = reference
    for got in run_ranks(ranks, one_step, SMALL + layout, init):
        _assert_close(ref, got)


def test_pipeline_with_data_parallel_distributed_optimizer_matches_single_rank(reference):
    init, ref = reference
    results = run_ranks(4, one_step, SMALL + ["parallel.pp=2", "parallel.distributed_optimizer=true"], init)
    for got in results:
        _assert_close(ref, got, grads=False)
