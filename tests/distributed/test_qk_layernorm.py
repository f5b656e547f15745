"""model.qk_layernorm (per-head RMSNorm of queries and keys, Emu3.5 / Qwen3) with a head width other
than hidden / heads: TP=2, CP=2 (ring attention) and the Transformer Engine THD layout at CP=2 give
the loss and every gradient of one rank (same weights and packed shard batch; loss rel 1e-6,
gradients atol 2e-6, fp32 on CPU); a resumed run is bitwise the uninterrupted one. Also: HF export
refuses such a model, and the Emu3.5-34B preset's dry run prints the published parameter count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.data.shard_factory import random_shard
from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import one_step, one_step_te_reference

REPO = Path(__file__).resolve().parents[2]
QK = ["model.qk_layernorm=true", "model.head_dim=24"]  # 4 heads x 24 = 96-wide queries in a 64-wide model


@pytest.fixture(scope="module")
def overrides(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    random_shard(str(root / "mixed"), 60, kinds=(0, 1, 2), seed=11)
    return QK + ["data.source=shards", f"data.sources=[{{prefix: {root / 'mixed'}, weight: 1.0}}]",
                 "data.seq_length=64", "data.micro_batch_size=2", "data.global_batch_size=4",
                 "optimizer.warmup_iters=0", "optimizer.lr=1e-4", "optimizer.min_lr=0",
                 "model.make_vocab_size_divisible_by=256"]


@pytest.fixture(scope="module")
def reference(overrides, tmp_path_factory):
    init = str(tmp_path_factory.mktemp("ref") / "init.pt")
    (result,) = run_ranks(1, one_step, overrides, None, init)
    return init, result


def test_qk_norm_weights_are_trained(reference):
    _, ref = reference
    q_norms = {n: g for n, g in ref["grads"].items() if "q_layernorm" in n}
    k_norms = {n: g for n, g in ref["grads"].items() if "k_layernorm" in n}
    assert len(q_norms) == len(k_norms) == 2  # one per layer
    assert all(g.shape == (24,) and g.abs().sum() > 0 for g in [*q_norms.values(), *k_norms.values()])
    qkv = next(p for n, p in ref["params"].items() if n.endswith("layers.0.self_attention.linear_qkv.weight"))
    assert qkv.shape == ((4 + 2 * 2) * 24, 64)


@pytest.mark.parametrize("scenario,world,layout", [
    (one_step, 2, ["parallel.tp=2"]),
    (one_step, 2, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    (one_step, 2, ["parallel.cp=2"]),
    (one_step_te_reference, 2, ["parallel.cp=2"]),
], ids=["tp2", "tp2-sp", "cp2-ring", "cp2-te-thd"])
def test_qk_layernorm_layouts_match_single_rank(overrides, reference, scenario, world, layout):
    init, ref = reference
    for got in run_ranks(world, scenario, overrides + layout, init, timeout=400):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=2e-6, rtol=1e-5, msg=f"grad of {name}")


def test_hf_export_refuses_qk_layernorm():
    from megatron_emu3.config.presets import model_preset
    from megatron_emu3.config.schema import ModelConfig
    from megatron_emu3.convert.hf_config import check_hf_representable, to_hf_text_config

    with pytest.raises(ValueError, match="qk_layernorm=true .*no per-head query/key RMSNorm.*head_dim=128"):
        check_hf_representable(ModelConfig(**model_preset("emu3p5_34b")))
    with pytest.raises(ValueError, match="cannot be exported to transformers' Emu3 classes"):
        to_hf_text_config(ModelConfig(qk_layernorm=True), 1024)
    check_hf_representable(ModelConfig(**model_preset("emu3_8b")))  # Emu3 itself exports


def test_emu3p5_34b_dry_run_prints_the_published_count():
    from megatron_emu3.config.presets import model_preset
    from megatron_emu3.config.schema import ModelConfig
    from megatron_emu3.model.params import count_parameters

    counts = count_parameters(ModelConfig(**model_preset("emu3p5_34b")))
    assert counts["embeddings"] == 282_926 * 5120 * 2 == 2_897_162_240  # paper: 2.9B embeddings
    assert counts["layers"] == 64 * (5120 * (64 + 16) * 128 + 64 * 128 * 5120 + 3 * 5120 * 25600 + 2 * 5120 + 2 * 128)
    assert round(counts["layers"] / 1e9, 1) == 31.2 and round(counts["total"] / 1e9, 1) == 34.1
    out = subprocess.run([sys.executable, "-m", "megatron_emu3.train", "--config",
                          str(REPO / "examples/recipes/emu3p5_34b.yaml"), "--dry-run"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "EMU3_DATA": "/data"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"parameters (unpadded vocab 282,926): {counts['total']:,}" in out.stdout + out.stderr
    assert counts["total"] == 34_103_460_864


def test_qk_layernorm_resume_is_bitwise(tmp_path):
    from tests.distributed.scenarios import train_save

    base = QK + ["model.vocab_size=512", "data.synthetic_vocab=64", "data.seq_length=32", "checkpoint.interval=2",
                 "model.hidden_dropout=0.1", "model.attention_dropout=0.1", "optimizer.warmup_iters=1"]
    (straight,) = run_ranks(1, train_save, base + ["train.iters=4"], str(tmp_path / "straight"), timeout=300)
    run_ranks(1, train_save, base + ["train.iters=2"], str(tmp_path / "resumed"), timeout=300)
    (resumed,) = run_ranks(1, train_save, base + ["train.iters=4"], str(tmp_path / "resumed"), timeout=300)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the second launch went on from the step-2 checkpoint, not from scratch
    assert any("q_layernorm" in n for n in straight["params"])
    for name, p in straight["params"].items():
        assert torch.equal(resumed["params"][name], p), name
    assert torch.equal(resumed["logits"], straight["logits"])


def qk_generation(overrides: list[str]) -> dict:
    """In a spawned rank: a random QK-norm model; KV-cached decoding steps vs the full forward."""
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.generation.api import decode, left_pad
    from megatron_emu3.generation.decoding import MegatronLM
    from megatron_emu3.generation.sampling import SamplingConfig
    from megatron_emu3.model.build import build_model
    from megatron_emu3.parallel.setup import DistEnv, destroy_distributed, init_distributed
    from tests.distributed.scenarios import RECIPE

    cfg = resolve_config(RECIPE, overrides)
    init_distributed(cfg, DistEnv(0, 1, 0))
    torch.manual_seed(0)
    model = build_model(cfg)
    cached, full = (MegatronLM(model, cfg.model.vocab_size, max_length=64),
                    MegatronLM(model, cfg.model.vocab_size, max_length=64, use_cache=False))
    ids, valid = left_pad([[5, 9, 11, 3], [7, 2]])
    steps = [cached.start(ids, valid)] + [cached.step(torch.tensor([k, k + 1])) for k in (4, 6, 8)]
    new = torch.tensor([[4, 6, 8], [5, 7, 9]])
    reference = full.full_logits(torch.cat([ids, new], 1), torch.cat([valid, torch.ones_like(new, dtype=torch.bool)], 1))
    out = {"max_diff": max((steps[k] - reference[:, 3 + k]).abs().max().item() for k in range(len(steps))),
           "greedy_cached": decode(cached, [[5, 9, 11]], 6, SamplingConfig(top_k=1))[0],
           "greedy_full": decode(full, [[5, 9, 11]], 6, SamplingConfig(top_k=1))[0]}
    destroy_distributed()
    return out


def test_qk_layernorm_generation_cache_matches_full_forward():
    (out,) = run_ranks(1, qk_generation, QK + ["model.vocab_size=512", "model.init_std=0.3",
                                              "parallel.attention_backend=sdpa"], timeout=300)
    assert out["max_diff"] < 1e-4 and out["greedy_cached"] == out["greedy_full"]
