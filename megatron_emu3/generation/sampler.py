"""Choosing the next token: classifier-free guidance, temperature, top-k, top-p, greedy.

Pure torch on logits [n, vocab], so every rule is testable without a model:
- `guide(cond, uncond, scale)`: transformers' rule on log-probabilities,
  ``log_softmax(uncond) + scale * (log_softmax(cond) - log_softmax(uncond))``; scale 1.0 returns the
  conditional log-probabilities themselves (no rounding), so guidance 1.0 samples exactly as no CFG;
- `filter_logits`: temperature, then top-k, then top-p (nucleus; the most likely token always stays);
- `choose`: argmax when greedy, else one draw per row from a seeded `torch.Generator` (on the CPU, so
  a seed gives the same tokens on any device and on every tensor-parallel rank).
"""

from __future__ import annotations

import torch

from megatron_emu3.generation.sampling import SamplingConfig


def guide(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Guided log-probabilities [n, vocab] from conditional and unconditional logits (None: no CFG)."""
    cond_lp = torch.log_softmax(cond.float(), dim=-1)
    if uncond is None or scale == 1.0:
        return cond_lp
    uncond_lp = torch.log_softmax(uncond.float(), dim=-1)
    return uncond_lp + scale * (cond_lp - uncond_lp)


def is_greedy(cfg: SamplingConfig) -> bool:
    return cfg.temperature == 0.0 or cfg.top_k == 1


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature-scaled logits with everything outside top-k / top-p set to -inf."""
    if cfg.temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling (0 means greedy), got {cfg.temperature}")
    if not 0.0 < cfg.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {cfg.top_p}")
    logits = logits.float() / cfg.temperature
    if cfg.top_k and 0 < cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= cfg.top_p  # mass before this token already >= p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def choose(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row [n] (int64, on the logits' device)."""
    if is_greedy(cfg):
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, cfg), dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)
