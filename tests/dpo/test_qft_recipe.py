"""The QFT recipe (examples/recipes/tiny_qft.yaml) trains on vision codes only, with a linear LR
anneal to 0, and resumes bit for bit with the distributed optimizer; the 8B QFT recipe resolves and
validates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_emu3.config.loading import resolve_config
from megatron_emu3.config.validation import validate_config
from megatron_emu3.data.tokens import DocKind
from tests.data.shard_factory import generation_doc, text_doc, understanding_doc, write_shard
from tests.distributed.launcher import run_ranks
from tests.dpo.scenarios import RECIPE, qft_run


def test_qft_trains_only_on_vision_tokens(tmp_path):
    rng = np.random.default_rng(0)
    docs, kinds = [], []
    for i in range(24):
        kind = [DocKind.TEXT, DocKind.IMAGE_GENERATION, DocKind.IMAGE_UNDERSTANDING][i % 3]
        maker = {DocKind.TEXT: lambda: text_doc(rng, 20), DocKind.IMAGE_GENERATION: lambda: generation_doc(rng, 6, 4, 4),
                 DocKind.IMAGE_UNDERSTANDING: lambda: understanding_doc(rng, 6, 4, 4)}[kind]
        docs.append(maker())
        kinds.append(kind)
    (tmp_path / "data" / "stage1").mkdir(parents=True)
    write_shard(str(tmp_path / "data" / "stage1" / "shard_0"), docs, kinds)
    common = ["data.seq_length=128", "parallel.attention_backend=sdpa", "parallel.distributed_optimizer=true",
              "optimizer.decay_iters=3", "checkpoint.save_at_end=false"]
    records = run_ranks(1, qft_run, str(tmp_path / "data"), str(tmp_path / "run"), common + ["train.iters=3"])[0]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["text_tokens"] == 0 and r["text_loss"] is None
        assert r["vision_tokens"] > 0 and r["loss"] == pytest.approx(r["vision_loss"], rel=1e-6)
    lrs = [r["lr"] for r in records]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(1e-3)

    # stopped after a checkpoint at step 1 and resumed (distributed optimizer): the same steps, bit for bit
    run_ranks(1, qft_run, str(tmp_path / "data"), str(tmp_path / "resumed"), common + ["train.iters=1",
                                                                                       "checkpoint.interval=1"])
    resumed = run_ranks(1, qft_run, str(tmp_path / "data"), str(tmp_path / "resumed"), common + ["train.iters=3"])[0]
    by_step = {r["step"]: r for r in resumed}
    for r in records:
        for key in ("loss", "vision_loss", "grad_norm", "lr"):
            assert by_step[r["step"]][key] == r[key], (r["step"], key)


def test_8b_qft_recipe_is_valid(monkeypatch):
    monkeypatch.setenv("EMU3_DATA", "/data")
    cfg = resolve_config(str(Path(RECIPE).with_name("emu3_8b_qft.yaml")))
    validate_config(cfg, world_size=64)
    assert cfg.data.loss_policy == "qft" and cfg.optimizer.decay_style == "linear" and cfg.optimizer.min_lr == 0.0
    assert cfg.data.seq_length >= 8200  # a 720px image document (~8,200 tokens) fits
