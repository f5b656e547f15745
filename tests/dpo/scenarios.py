"""Functions that run inside spawned ranks for the DPO tests (importable by the spawn start method)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

RECIPE = str(Path(__file__).resolve().parents[2] / "examples" / "recipes" / "tiny_dpo.yaml")
VOCAB = 512


def synthetic_triplets(count: int, seed: int = 0, vocab: int = VOCAB) -> list[tuple]:
    """Random prompts; chosen and rejected completions of different lengths drawn from two id ranges."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        prompt = rng.integers(0, vocab, int(rng.integers(3, 9)))
        chosen = np.concatenate([prompt, rng.integers(0, vocab // 2, int(rng.integers(2, 7)))])
        rejected = np.concatenate([prompt, rng.integers(vocab // 2, vocab, int(rng.integers(2, 7)))])
        out.append((prompt, chosen, rejected))
    return out


def gradient_check(overrides: list[str]) -> dict:
    """DPO loss and gradients at policy = reference, and the same gradients computed by hand."""
    from megatron.core.distributed import finalize_model_grads

    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.dpo.loss import dpo_metrics
    from megatron_emu3.dpo.shards import PreferenceShard
    from megatron_emu3.dpo.batches import preference_batch
    from megatron_emu3.dpo.task import DPOTask
    from megatron_emu3.batch.inputs import document_attention_mask
    from megatron_emu3.model.build import build_model, unwrap
    from megatron_emu3.model.full_state import gather_full_state
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.step import forward_backward
    from megatron_emu3.training.trainer import build_run

    cfg = resolve_config(RECIPE, overrides)
    beta, sft_weight = cfg.dpo.beta, cfg.dpo.sft_weight
    prefs = [PreferenceShard(cfg.dpo.data, VOCAB)[i] for i in range(4)]
    run = build_run(cfg)
    task = DPOTask(run)
    batch = preference_batch(prefs, cfg.data.seq_length, "cpu")
    run.model.zero_grad_buffer()
    total = forward_backward(run.model, task, [batch], run.ctx)
    finalize_model_grads([run.model])
    got = gather_full_state(run.model, grads=True)
    metrics = dpo_metrics(total, sft_weight)

    # by hand: log-softmax of a plain forward; d(-log sigmoid(z))/dz = -1/2 at z = 0
    hand = build_model(cfg)
    source = dict(unwrap(run.model).named_parameters())
    with torch.no_grad():
        for name, p in hand.named_parameters():
            p.copy_(source[name])
    logits = hand(batch["tokens"], batch["position_ids"], document_attention_mask(batch["segment_ids"]))
    logp = torch.log_softmax(logits.float()[..., :VOCAB], -1).gather(-1, batch["labels"][..., None])[..., 0]
    mask = batch["loss_weights"]
    seq = (logp * mask).sum(-1)
    n = len(prefs)
    margin_grad = -(beta / 2) * (seq[:n] - seq[n:]).mean()
    sft = -(logp[:n] * mask[:n]).sum() / mask[:n].sum()
    params = dict(hand.named_parameters())
    grads = torch.autograd.grad(margin_grad + sft_weight * sft, list(params.values()))
    expected = {name: g.detach() for name, g in zip(params, grads)}
    destroy_distributed()
    return {"dpo_loss": metrics["dpo_loss"], "margin": metrics["margin"], "sft_loss": metrics["sft_loss"],
            "expected_sft": float(sft), "log2": math.log(2.0), "got": got, "expected": expected}


def short_dpo_run(overrides: list[str]) -> list[dict]:
    """Train DPO for train.iters steps; returns the metrics records (rank 0) or []."""
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.dpo.train import train_dpo
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.metrics import read_metrics

    cfg = resolve_config(RECIPE, overrides)
    run, _ = train_dpo(cfg)
    records = read_metrics(cfg.run_dir) if run.ctx.rank == 0 else []
    destroy_distributed()
    return records


def qft_run(data_dir: str, run_dir: str, overrides: list[str]) -> list[dict]:
    """Train examples/recipes/tiny_qft.yaml on shards under `data_dir`; returns the metrics records."""
    import os

    os.environ["EMU3_DEMO_DATA"] = data_dir
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.metrics import read_metrics
    from megatron_emu3.training.trainer import train

    recipe = str(Path(RECIPE).with_name("tiny_qft.yaml"))
    cfg = resolve_config(recipe, [f"run_dir={run_dir}", *overrides])
    train(cfg)
    destroy_distributed()
    return read_metrics(run_dir)
