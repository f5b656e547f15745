"""`--dry-run`: check a recipe on any machine without building anything on a device.

Prints the resolved config, the exact parameter count (unpadded and as built with the padded vocab),
the padded vocabulary and the parallel layout for the planned world size. Pure arithmetic.
"""

from __future__ import annotations

import yaml

from megatron_emu3.config.loading import config_to_dict
from megatron_emu3.config.schema import Config
from megatron_emu3.config.validation import (
    data_parallel_size,
    num_micro_batches,
    padded_vocab_size,
    stage_layers,
    validate_config,
)
from megatron_emu3.parallel.planner import pipeline_bubble
from megatron_emu3.model.params import count_parameters


def dry_run(cfg: Config, world_size: int | None = None) -> str:
    """The dry-run report for `cfg` on `world_size` ranks (default: the recipe's launch shape)."""
    world = world_size or cfg.launch.nodes * cfg.launch.gpus_per_node
    validate_config(cfg, world)
    m, p = cfg.model, cfg.parallel
    padded = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, p.tp)
    real = count_parameters(m)
    built = count_parameters(m, padded)
    dp = data_parallel_size(cfg, world)
    lines = [
        "# resolved config",
        yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip(),
        "",
        "# model",
        f"parameters (unpadded vocab {m.vocab_size:,}): {real['total']:,}",
        f"  embeddings {real['embeddings']:,} | per layer {real['per_layer']:,} x {m.num_layers} layers | final norm {real['final_norm']:,}",
        f"padded vocab (multiple of {m.make_vocab_size_divisible_by} x lcm(8, tp {p.tp}), masked): {padded:,}",
        f"parameters as built (padded vocab): {built['total']:,}",
        f"parameters per rank (tp {p.tp}): ~{built['total'] // p.tp:,}",
        "",
        "# layout",
        f"world {world} = tp {p.tp} x cp {p.cp} x pp {p.pp} x dp {dp}",
        f"sequence parallel {p.sequence_parallel} | distributed optimizer {p.distributed_optimizer} | "
        f"recompute {p.recompute} | attention {p.attention_backend}",
        _pipeline_line(cfg, num_micro_batches(cfg, world)),
        f"global batch {cfg.data.global_batch_size} = micro batch {cfg.data.micro_batch_size} x dp {dp} x "
        f"{num_micro_batches(cfg, world)} micro-batches; {cfg.data.global_batch_size * cfg.data.seq_length:,} "
        f"tokens per step at seq {cfg.data.seq_length:,}",
    ]
    return "\n".join(lines)


def _pipeline_line(cfg: Config, micro_batches: int) -> str:
    p = cfg.parallel
    if p.pp == 1:
        return "pipeline: 1 stage (all layers, embedding and output layer on every rank)"
    layers = stage_layers(cfg)
    chunks = f", {p.vpp} virtual stages per rank (interleaved 1F1B)" if p.vpp else " (1F1B)"
    return (f"pipeline: {p.pp} stages x layers {layers}{chunks}; the first holds the embedding, the last the "
            f"output layer; bubble (pp-1)/(vpp x micro-batches) = {pipeline_bubble(p.pp, p.vpp, micro_batches):.1%}")
