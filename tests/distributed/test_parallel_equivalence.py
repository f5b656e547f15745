"""TP=2 and DP=2 (with and without the distributed optimizer) against one rank, same weights, same
global batch. Tolerances: loss within 1e-6 relative, every gradient and updated parameter within
atol 2e-6 (fp32 on CPU; differences come only from summation order in reductions). Adam's first
step is sign-like (g / (|g| + eps)) where a gradient is ~1e-8, so rounding there moves a parameter by
up to ~lr: the runs use lr 1e-4, which bounds that effect below the tolerance."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import one_step

SMALL = ["model.vocab_size=512", "data.synthetic_vocab=64", "data.seq_length=32", "optimizer.warmup_iters=0",
         "optimizer.lr=1e-4", "optimizer.min_lr=0"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    init = str(tmp_path_factory.mktemp("ref") / "init.pt")
    (result,) = run_ranks(1, one_step, SMALL, None, init)
    return init, result


def _assert_close(ref: dict, got: dict, grads: bool = True) -> None:
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    if grads:
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=2e-6, rtol=1e-5, msg=f"grad of {name}")
    for name, p in ref["params"].items():
        torch.testing.assert_close(got["params"][name], p, atol=2e-6, rtol=1e-5, msg=f"param {name}")


def test_tensor_parallel_2_matches_single_rank(reference):
    init, ref = reference
    results = run_ranks(2, one_step, SMALL + ["parallel.tp=2"], init)
    for got in results:
        _assert_close(ref, got)


def test_tensor_parallel_2_with_sequence_parallel_matches_single_rank(reference):
    init, ref = reference
    results = run_ranks(2, one_step, SMALL + ["parallel.tp=2", "parallel.sequence_parallel=true"], init)
    _assert_close(ref, results[0])


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_data_parallel_2_matches_single_rank(reference, overlap):
    """Two micro-batches per rank: buckets reduced during the last backward (overlap) or after it."""
    init, ref = reference
    results = run_ranks(2, one_step, SMALL + [f"parallel.overlap_grad_reduce={overlap}"], init)
    for got in results:
        _assert_close(ref, got)


def test_data_parallel_2_distributed_optimizer_matches_single_rank(reference):
    init, ref = reference
    results = run_ranks(2, one_step, SMALL + ["parallel.distributed_optimizer=true"], init)
    _assert_close(ref, results[0], grads=False)


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_recomputation_changes_nothing(reference, mode):
    init, ref = reference
    (got,) = run_ranks(1, one_step, SMALL + [f"parallel.recompute={mode}"], init)
    _assert_close(ref, got)


def test_fused_kernels_change_nothing(reference):
    """The torch.compile'd SwiGLU and bias-dropout-add fusions that GPU runs use by default
    (train.fused_kernels=auto), run here on CPU under TP=2 + SP: same loss, gradients, update. Compiled
    as on a GPU: without the variable, a CPU process leaves them uncompiled (megatron_emu3/mcore_jit.py)."""
    init, ref = reference
    results = run_ranks(2, one_step, SMALL + ["train.fused_kernels=fused", "parallel.tp=2", "parallel.sequence_parallel=true"],
                        init, timeout=500, env={"EMU3_COMPILE_FUSIONS_ON_CPU": "1"})
    assert all(r["jit_fuser"] == "compile" for r in results), [r["jit_fuser"] for r in results]
    _assert_close(ref, results[0])


def test_overlapped_parameter_gather_changes_nothing(tmp_path):
    """DP=2 with the distributed optimizer, 3 steps and a checkpoint at step 2: gathering updated
    parameters during the next forward (overlap_param_gather) gives bit-identical parameters, logits
    and checkpoint weights to gathering right after each optimizer step."""
    from tests.distributed.scenarios import load_only, train_save

    base = SMALL + ["parallel.distributed_optimizer=true", "train.iters=3", "checkpoint.interval=2"]
    runs = {}
    for overlap in ("false", "true"):
        run_dir = str(tmp_path / overlap)
        trained = run_ranks(2, train_save, base + [f"parallel.overlap_param_gather={overlap}"], run_dir)[0]
        saved = run_ranks(2, load_only, base, f"{run_dir}/checkpoints/iter_0000002", True)[0]
        runs[overlap] = trained, saved
    for (trained, saved), (trained_ref, saved_ref) in [(runs["true"], runs["false"])]:
        for name, p in trained_ref["params"].items():
            assert torch.equal(trained["params"][name], p), name
            assert torch.equal(saved["params"][name], saved_ref["params"][name]), name
        assert torch.equal(trained["logits"], trained_ref["logits"])
    assert not torch.equal(saved_ref["params"][name], trained_ref["params"][name])  # step 2 != step 3
