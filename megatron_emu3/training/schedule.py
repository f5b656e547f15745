"""Learning-rate schedule: linear warmup then cosine (or linear/constant) decay to min_lr.

A pure function of the step, so resuming needs only the step count. Step i (0-based) of warmup
uses lr * (i + 1) / warmup, so no optimizer step is spent at lr 0.
"""

from __future__ import annotations

import math

from megatron_emu3.config.schema import OptimizerConfig


def lr_at(step: int, opt: OptimizerConfig, total_iters: int) -> float:
    """Learning rate of optimizer step `step` (0-based)."""
    decay_iters = opt.decay_iters or total_iters
    if opt.warmup_iters > 0 and step < opt.warmup_iters:
        return opt.lr * (step + 1) / opt.warmup_iters
    if opt.decay_style == "constant":
        return opt.lr
    span = max(1, decay_iters - opt.warmup_iters)
    progress = min(1.0, (step - opt.warmup_iters) / span)
    if opt.decay_style == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return opt.min_lr + (opt.lr - opt.min_lr) * factor


def apply_lr(optimizer, lr: float, weight_decay: float) -> None:
    """Set lr and weight decay on every param group (megatron-core's lr_mult / wd_mult respected)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)
