"""On a CUDA GPU: KV-cache decoding equals the full forward (torch SDPA spec, fp32 and bf16 weights)."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.launcher import run_ranks
from tests.generation.scenarios import RECIPE


def cache_vs_full_on_cuda(dtype_name: str) -> float:
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.generation.api import left_pad
    from megatron_emu3.generation.decoding import MegatronLM
    from megatron_emu3.model.build import build_model
    from megatron_emu3.parallel.env import DistEnv
    from megatron_emu3.parallel.setup import destroy_distributed, init_distributed

    cfg = resolve_config(RECIPE, ["parallel.attention_backend=sdpa", "data.seq_length=64"])
    init_distributed(cfg, DistEnv(0, 1, 0))
    gpt = build_model(cfg).cuda().to(getattr(torch, dtype_name))
    ids, valid = left_pad([[151849, 5, 6, 7, 8], [151849, 9]], device="cuda")
    cached, full = (MegatronLM(gpt, cfg.model.vocab_size, max_length=64),
                    MegatronLM(gpt, cfg.model.vocab_size, max_length=64, use_cache=False))
    steps = [cached.start(ids, valid)]
    new = torch.tensor([[1, 2, 3], [4, 5, 6]], device="cuda")
    steps += [cached.step(new[:, k]) for k in range(3)]
    reference = full.full_logits(torch.cat([ids, new], 1), torch.cat([valid, torch.ones_like(new, dtype=torch.bool)], 1))
    diff = max((steps[k] - reference[:, 4 + k]).abs().max().item() for k in range(4))
    destroy_distributed()
    return diff


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-3), ("bfloat16", 0.25)])
def test_cache_equals_full_forward_on_cuda(dtype, tol):
    assert run_ranks(1, cache_vs_full_on_cuda, dtype)[0] < tol
