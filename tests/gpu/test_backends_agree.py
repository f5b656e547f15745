"""On a CUDA machine: every installed attention backend (torch SDPA with a document mask, flash-attn
varlen, torch's built-in varlen kernel, Transformer Engine over THD-packed documents) gives the loss of one bf16 step on packed
multi-document shard samples from the same weights, within bf16 tolerance. Skipped without CUDA."""

from __future__ import annotations

import importlib.util

import pytest

from tests.data.shard_factory import random_shard
from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import one_step


@pytest.mark.gpu
@pytest.mark.parametrize("backend,package", [("flash", "flash_attn"), ("te", "transformer_engine"),
                                             ("varlen", "torch.nn.attention.varlen")])
def test_backend_matches_sdpa_on_packed_documents(tmp_path, backend, package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    random_shard(str(tmp_path / "mixed"), 120, kinds=(0, 1, 2), seed=7)
    overrides = ["data.source=shards", f"data.sources=[{{prefix: {tmp_path / 'mixed'}, weight: 1.0}}]",
                 "data.seq_length=512", "data.micro_batch_size=2", "data.global_batch_size=4",
                 "train.precision=bf16", "optimizer.warmup_iters=0", "optimizer.lr=1e-4", "optimizer.min_lr=0"]
    init = str(tmp_path / "init.pt")
    (ref,) = run_ranks(1, one_step, overrides + ["parallel.attention_backend=sdpa"], None, init)
    (got,) = run_ranks(1, one_step, overrides + [f"parallel.attention_backend={backend}"], init)
    assert got["loss"] == pytest.approx(ref["loss"], rel=2e-2)
