"""Planner arithmetic: FLOPs per token of Emu3-8B, memory parts, and that the 8B and 34B recipes use the
planner's suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_emu3.config.loading import resolve_config
from megatron_emu3.parallel.planner import GIB, Layout, memory_per_gpu, model_flops_per_token, suggest

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"


def test_emu3_8b_flops_per_token_match_the_published_convention():
    cfg = resolve_config(None, ["preset=emu3_8b"])
    assert model_flops_per_token(cfg, 5120) / 1e9 == pytest.approx(50.4, abs=0.05)
    at_131k = model_flops_per_token(cfg, 131072)
    assert at_131k / 1e9 == pytest.approx(149.5, abs=0.05)
    attention = 6 * 32 * 131072 * 4096
    assert attention / at_131k == pytest.approx(0.69, abs=0.005)


def test_memory_parts_scale_with_the_layout():
    cfg = resolve_config(str(RECIPES / "emu3_8b_stage1.yaml"))
    one = memory_per_gpu(cfg, Layout(tp=1, cp=1, dp=64, recompute="none"))
    two = memory_per_gpu(cfg, Layout(tp=2, cp=1, dp=32, recompute="none"))
    # bf16 weights of 8.49B params (padded vocab) on one GPU, halved by tp 2
    assert one["weights"] / 1e9 == pytest.approx(2 * 8.4937, rel=1e-3)
    assert two["weights"] == pytest.approx(one["weights"] / 2, rel=1e-3)
    assert one["grads"] == pytest.approx(2 * one["weights"])
    full = memory_per_gpu(cfg, Layout(tp=1, cp=1, dp=64, recompute="full"))
    assert full["activations"] < one["activations"] / 5
    no_distopt = memory_per_gpu(cfg, Layout(tp=1, cp=1, dp=64, recompute="none", distributed_optimizer=False))
    assert no_distopt["optimizer"] == pytest.approx(64 * one["optimizer"])


def test_sdpa_counts_its_repeated_kv_and_document_mask():
    """attention_backend=sdpa keeps K/V repeated to 32 heads per layer and one mask + bf16 bias of
    5,120 x 5,120 per micro-batch (model/attention.py's CUDA form); flash-style backends keep neither."""
    cfg = resolve_config(str(RECIPES / "emu3_8b_stage1.yaml"), ["data.micro_batch_size=1"])
    sdpa = resolve_config(str(RECIPES / "emu3_8b_stage1.yaml"), ["data.micro_batch_size=1",
                                                                 "parallel.attention_backend=sdpa"])
    layout = Layout(tp=1, cp=1, dp=64, recompute="none")
    extra = memory_per_gpu(sdpa, layout)["activations"] - memory_per_gpu(cfg, layout)["activations"]
    assert extra == pytest.approx(32 * 4 * (32 - 8) * 128 * 5120 + 3 * 5120 * 5120)
    assert extra / GIB == pytest.approx(1.95, abs=0.01)


@pytest.mark.parametrize("recipe", ["emu3_8b_stage1.yaml", "emu3_8b_stage2.yaml", "emu3p5_34b.yaml"])
def test_recipes_use_the_planner_suggestion(recipe):
    cfg = resolve_config(str(RECIPES / recipe))
    world = cfg.launch.nodes * cfg.launch.gpus_per_node
    best, _ = suggest(cfg, world, cfg.launch.gpus_per_node, cfg.launch.gpu_memory_gib)
    assert best is not None
    p = cfg.parallel
    assert (best.tp, best.cp, best.pp, best.vpp, best.recompute) == (p.tp, p.cp, p.pp, p.vpp, p.recompute)
    assert memory_per_gpu(cfg, best)["total"] < cfg.launch.gpu_memory_gib * GIB


def test_nothing_fits_is_reported():
    cfg = resolve_config(str(RECIPES / "emu3_8b_stage2.yaml"))
    best, rows = suggest(cfg, 8, 8, 16.0)
    assert best is None and rows


def test_pipeline_stages_bubble_and_a_suggestion_that_needs_pp():
    """8B at 5,120 on 8 GPUs of 24 GiB does not fit without pipeline stages; the planner splits it,
    plans every stage (embedding on the first, output layer and logits on the last) and counts the
    bubble (pp - 1) / (vpp x micro-batches)."""
    from megatron_emu3.parallel.planner import memory_per_stage, pipeline_bubble

    cfg = resolve_config(str(RECIPES / "emu3_8b_stage1.yaml"))
    best, rows = suggest(cfg, 8, 8, 24.0)
    assert best is not None and best.pp > 1
    assert all(layout.pp == 1 for layout, _ in rows) is False
    stages = memory_per_stage(cfg, best)
    assert len(stages) == best.pp and sum(s["layers"] for s in stages) == 32
    assert stages[0]["logits"] == 0 and stages[-1]["logits"] > 0
    assert max(s["total"] for s in stages) <= 0.85 * 24 * GIB
    assert pipeline_bubble(4, None, 8) == pytest.approx(3 / 8) and pipeline_bubble(4, 2, 8) == pytest.approx(3 / 16)
    one = memory_per_gpu(cfg, Layout(tp=1, cp=1, dp=8, recompute="none"))
    two = memory_per_gpu(cfg, Layout(tp=1, cp=1, dp=4, recompute="none", pp=2))
    assert two["weights"] < 0.6 * one["weights"] and len(two["stages"]) == 2
