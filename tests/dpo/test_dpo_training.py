"""DPO on real gloo ranks: log 2 and the hand-computed gradient at policy = reference; a few steps
raise the chosen-vs-rejected margin (tensor parallel 2, as in pretraining)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_emu3.dpo.shards import write_preferences
from tests.distributed.launcher import run_ranks
from tests.dpo.scenarios import VOCAB, gradient_check, short_dpo_run, synthetic_triplets

BASE = [f"model.vocab_size={VOCAB}", "parallel.attention_backend=sdpa", "data.seq_length=16"]


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("prefs") / "pairs"
    write_preferences(prefix, synthetic_triplets(8), VOCAB)
    return str(prefix)


def test_policy_equals_reference_gives_log2_and_hand_gradient(prefs):
    (out,) = run_ranks(1, gradient_check, BASE + [f"dpo.data={prefs}", "dpo.beta=0.5", "dpo.sft_weight=0.3"])
    assert out["margin"] == 0.0
    assert out["dpo_loss"] == pytest.approx(math.log(2.0), abs=1e-12)
    assert out["sft_loss"] == pytest.approx(out["expected_sft"], rel=1e-5)
    assert set(out["got"]) == set(out["expected"])
    scale = max(g.abs().max().item() for g in out["expected"].values())
    assert scale > 0
    for name, expected in out["expected"].items():
        diff = (out["got"][name] - expected).abs().max().item()
        assert diff <= 1e-5 * scale + 1e-8, f"{name}: {diff} (scale {scale})"


@pytest.mark.slow
def test_few_steps_raise_margin_under_tensor_parallel(prefs, tmp_path):
    overrides = BASE + [f"dpo.data={prefs}", f"run_dir={tmp_path / 'run'}", "parallel.tp=2", "train.iters=6",
                        "optimizer.lr=3e-3", "dpo.beta=0.5", "checkpoint.save_at_end=false"]
    records = run_ranks(2, short_dpo_run, overrides)[0]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[0]["dpo_loss"] == pytest.approx(math.log(2.0), abs=1e-6)  # first step: policy = reference
    assert records[0]["margin"] == pytest.approx(0.0, abs=1e-5)
    margins = [r["margin"] for r in records]
    assert margins[-1] > margins[0] + 0.5, margins
    assert records[-1]["dpo_loss"] < records[0]["dpo_loss"]
    assert records[-1]["accuracy"] >= 0.75
    assert all(torch.isfinite(torch.tensor(r["grad_norm"])) for r in records)


def test_resumed_run_continues_bitwise(prefs, tmp_path):
    """4 steps straight = 2 steps, a checkpoint, then a new process resuming to 4: same metrics bit
    for bit (the reference is rebuilt from the same initialisation, the record order from the saved
    consumed-pairs count, the optimizer from the checkpoint)."""
    common = BASE + [f"dpo.data={prefs}", "optimizer.lr=3e-3", "optimizer.decay_iters=4", "dpo.beta=0.5",
                     "checkpoint.save_at_end=true",
                     "data.global_batch_size=4", "data.micro_batch_size=2"]
    straight = run_ranks(1, short_dpo_run, common + [f"run_dir={tmp_path / 'a'}", "train.iters=4"])[0]
    run_ranks(1, short_dpo_run, common + [f"run_dir={tmp_path / 'b'}", "train.iters=2"])
    resumed = run_ranks(1, short_dpo_run, common + [f"run_dir={tmp_path / 'b'}", "train.iters=4"])[0]
    by_step = {r["step"]: r for r in resumed}
    assert sorted(by_step) == [1, 2, 3, 4]
    for record in straight:
        got = by_step[record["step"]]
        for key in ("loss", "dpo_loss", "sft_loss", "margin", "grad_norm", "lr", "consumed_samples"):
            assert got[key] == record[key], (record["step"], key, got[key], record[key])
