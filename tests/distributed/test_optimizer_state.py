"""The optimizer state a checkpoint gives back is the state that was saved, tensor by tensor, for every
optimizer configuration the config allows, and the step after a load is the step the uninterrupted
run takes (bit for bit: loss, grad norm, every state tensor). A distributed-optimizer checkpoint
loads under another layout (DP2 -> 1 rank, DP2 -> TP2) with the same state, bit for bit: loading
only moves bytes; the data-parallel shards, tensor-parallel shards and pipeline stages are put back
together in the full layout (`checkpoint/full_optimizer_state.py`) before comparing.

megatron-core's DistributedOptimizer.load_state_dict gave every parameter one shared Adam ``step``
tensor (torch Adam, no Apex/TE), which torch's Adam then incremented once per parameter: the loaded
state compared equal, the first step after it did not. Hence the extra step in every case."""

from __future__ import annotations

import pytest

from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import assert_same_state, optimizer_after_load, optimizer_resume

SMALL = ["model.vocab_size=512", "data.synthetic_vocab=64", "data.seq_length=32", "train.iters=2",
         "optimizer.warmup_iters=1", "optimizer.decay_iters=10", "optimizer.weight_decay=0.1"]
DISTOPT = ["parallel.distributed_optimizer=true"]


CASES = {
    "one_rank_fp32": (1, []),
    "one_rank_bf16": (1, ["train.precision=bf16"]),
    "one_rank_distopt": (1, DISTOPT),
    "dp2_fp32": (2, []),
    "dp2_distopt": (2, DISTOPT),
    "dp2_distopt_bf16": (2, DISTOPT + ["train.precision=bf16"]),
    "dp2_distopt_no_overlap": (2, DISTOPT + ["parallel.overlap_param_gather=false",
                                             "parallel.overlap_grad_reduce=false"]),
    # one micro-batch per data-parallel rank (4 ranks share 2 cores in the suite)
    "tp2xdp2_distopt": (4, DISTOPT + ["parallel.tp=2", "data.global_batch_size=4"]),
    "pp2xdp2_distopt": (4, DISTOPT + ["parallel.pp=2", "data.global_batch_size=4"]),
}


@pytest.fixture(scope="module")
def dp2_distopt_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dp2_distopt") / "run"
    ranks, layout = CASES["dp2_distopt"]
    return run_dir, run_ranks(ranks, optimizer_resume, SMALL + layout, str(run_dir))


@pytest.mark.parametrize("case", list(CASES))
def test_loaded_optimizer_state_is_the_saved_state(case, tmp_path, dp2_distopt_run):
    ranks, layout = CASES[case]
    if case == "dp2_distopt":
        results = dp2_distopt_run[1]
    else:
        results = run_ranks(ranks, optimizer_resume, SMALL + layout, str(tmp_path / "run"))
    for rank, got in enumerate(results):
        assert_same_state(got["saved"], got["loaded"], f"{case} rank {rank}: loaded")
        assert got["saved"]["output_layer.weight"]["step"] == 2
        straight, resumed = got["straight"], got["resumed"]
        assert (resumed["loss"], resumed["grad_norm"]) == (straight["loss"], straight["grad_norm"]), case
        assert_same_state(straight["state"], resumed["state"], f"{case} rank {rank}: one step after the load")
        assert straight["state"]["output_layer.weight"]["step"] == 3


@pytest.mark.parametrize("load_ranks,layout", [(1, []), (1, DISTOPT), (2, DISTOPT + ["parallel.tp=2"])],
                         ids=["dp2_distopt_to_one_rank", "dp2_distopt_to_one_rank_distopt", "dp2_distopt_to_tp2"])
def test_distributed_optimizer_checkpoint_reshards_with_the_same_state(dp2_distopt_run, load_ranks, layout):
    run_dir, saved = dp2_distopt_run
    checkpoint = str(run_dir / "checkpoints" / "iter_0000002")
    for rank, got in enumerate(run_ranks(load_ranks, optimizer_after_load, SMALL + layout, checkpoint)):
        assert_same_state(saved[0]["saved"], got, f"rank {rank}")
