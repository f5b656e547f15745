"""Resharding: a checkpoint saved at TP=2 with the distributed optimizer loads at TP=1 and at DP=2
with bitwise-identical parameters (loading only moves bytes) and equal logits (atol 1e-5: a different
TP layout sums the partial matmuls in another order); a weights-only load
takes the model but not the step; a checkpoint of another architecture fails naming the tensor."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import load_only, train_save

SMALL = ["model.vocab_size=512", "data.synthetic_vocab=64", "data.seq_length=32", "train.iters=3",
         "optimizer.warmup_iters=1"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tp2") / "run"
    results = run_ranks(2, train_save, SMALL + ["parallel.tp=2", "parallel.distributed_optimizer=false"], str(run_dir))
    return run_dir / "checkpoints", results[0]


@pytest.fixture(scope="module")
def saved_distopt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dp2") / "run"
    results = run_ranks(2, train_save, SMALL + ["parallel.distributed_optimizer=true"], str(run_dir))
    return run_dir / "checkpoints", results[0]


def _assert_identical(ref: dict, got: dict) -> None:
    for name, value in ref["params"].items():
        assert torch.equal(got["params"][name], value), name
    torch.testing.assert_close(got["logits"], ref["logits"], atol=1e-5, rtol=1e-5)


def test_tp2_checkpoint_loads_at_tp1(saved):
    ckpt, ref = saved
    (got,) = run_ranks(1, load_only, SMALL, str(ckpt), False)
    _assert_identical(ref, got)
    assert got["step"] == 3 and got["consumed"] == 24


def test_tp2_checkpoint_loads_at_dp2_with_distributed_optimizer(saved):
    ckpt, ref = saved
    results = run_ranks(2, load_only, SMALL + ["parallel.distributed_optimizer=true"], str(ckpt), False)
    for got in results:
        _assert_identical(ref, got)


def test_distributed_optimizer_checkpoint_loads_at_tp2(saved_distopt):
    ckpt, ref = saved_distopt
    results = run_ranks(2, load_only, SMALL + ["parallel.tp=2"], str(ckpt), False)
    _assert_identical(ref, results[0])


def test_weights_only_load_keeps_step_zero(saved):
    ckpt, ref = saved
    (got,) = run_ranks(1, load_only, SMALL + ["data.seq_length=64"], str(ckpt), True)
    for name, value in ref["params"].items():
        assert torch.equal(got["params"][name], value), name
    assert got["step"] == 0 and got["consumed"] == 0


def test_other_architecture_names_first_mismatched_tensor(saved):
    ckpt, _ = saved
    with pytest.raises(RuntimeError, match=r"tensor '[\w.]+' has shape \([\d, ]+\) but this config builds \([\d, ]+\)"):
        run_ranks(1, load_only, SMALL + ["model.ffn_hidden_size=96"], str(ckpt), True)


FULL_VOCAB = ["data.synthetic_vocab=64", "data.seq_length=32", "train.iters=2", "optimizer.warmup_iters=1",
              "data.global_batch_size=4"]


@pytest.mark.parametrize("weights_only", [True, False])
def test_old_tp_dependent_padding_still_loads(tmp_path, weights_only):
    """Checkpoints from before the layout-independent padding have 184,832 embedding rows (TP 2) or
    184,704 (TP 1); today's model has 185,344 at any TP. The real 184,622 rows carry over. (Saved here
    with make_vocab_size_divisible_by=16 x lcm(8, 2) = 128 x TP 1's rule: 184,704 rows.)"""
    run_dir = tmp_path / "run"
    (saved, _) = run_ranks(2, train_save, FULL_VOCAB + ["parallel.tp=2", "model.make_vocab_size_divisible_by=16"],
                           str(run_dir))
    (got,) = run_ranks(1, load_only, FULL_VOCAB, str(run_dir / "checkpoints"), weights_only)
    for name, value in saved["params"].items():
        if name.endswith(("word_embeddings.weight", "output_layer.weight")):
            assert value.shape[0] == 184_704 and got["params"][name].shape[0] == 185_344
            value, other = value[:184_622], got["params"][name][:184_622]
        else:
            other = got["params"][name]
        assert torch.equal(other, value), name
    assert got["step"] == (0 if weights_only else 2)


@pytest.mark.parametrize("save_layout,save_ranks,load_layout,load_ranks", [
    (["parallel.pp=2"], 2, [], 1),
    (["parallel.pp=2", "parallel.distributed_optimizer=true"], 2, [], 1),
    ([], 1, ["parallel.pp=2", "parallel.tp=2"], 4),
    (["parallel.pp=2", "parallel.vpp=2", "model.num_layers=4"], 2,
     ["parallel.pp=2", "parallel.distributed_optimizer=true", "model.num_layers=4"], 2),
], ids=["pp2_to_pp1", "pp2_distopt_to_pp1", "pp1_to_pp2xtp2", "vpp2_to_pp2_distopt"])
def test_pipeline_checkpoints_reshard(tmp_path, save_layout, save_ranks, load_layout, load_ranks):
    """Model and optimizer saved under one pipeline layout load bit for bit under another (the
    files hold layer-indexed global tensors), with the train state."""
    run_dir = tmp_path / "run"
    saved = run_ranks(save_ranks, train_save, SMALL + save_layout, str(run_dir))[0]
    for got in run_ranks(load_ranks, load_only, SMALL + load_layout, str(run_dir / "checkpoints"), False):
        assert set(got["params"]) == set(saved["params"])
        for name, value in saved["params"].items():
            assert torch.equal(got["params"][name], value), name
        assert got["step"] == 3 and got["consumed"] == 24


def test_context_parallel_checkpoint_loads_at_tp1(tmp_path):
    run_dir = tmp_path / "run"
    (saved, _) = run_ranks(2, train_save, SMALL + ["parallel.cp=2", "parallel.distributed_optimizer=true"], str(run_dir))
    (got,) = run_ranks(1, load_only, SMALL, str(run_dir / "checkpoints"), False)
    for name, value in saved["params"].items():
        assert torch.equal(got["params"][name], value), name
    assert got["step"] == 3
