"""Checks on a resolved config: every rule names the key(s) at fault and says what to do.

`validate_config(cfg, world_size)` raises `ConfigError` on the first broken rule. Derived values
(padded vocab, data-parallel size, micro-batches per step) are computed here and nowhere else.
"""

from __future__ import annotations

import math

from megatron_emu3.config.loading import ConfigError
from megatron_emu3.config import schema
from megatron_emu3.config.schema import Config

CHOICES = {
    "data.source": schema.DATA_SOURCES,
    "data.loss_policy": schema.LOSS_POLICIES,
    "data.oversize_vision": schema.OVERSIZE_POLICIES,
    "parallel.attention_backend": schema.ATTENTION_BACKENDS,
    "parallel.recompute": schema.RECOMPUTE_MODES,
    "train.precision": schema.PRECISIONS,
    "train.fused_kernels": schema.FUSED_KERNELS,
    "optimizer.decay_style": schema.DECAY_STYLES,
}


VOCAB_PAD_TP = 8
"""The vocabulary is padded as if for this tensor-parallel size whatever the run's TP (up to it), so
the model (shapes, the random initialisation of every tensor) does not depend on the layout."""


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Embedding rows: vocab rounded up to a multiple of divisible_by x lcm(8, tp) (Emu3: 185,344 at any
    TP of 1, 2, 4 or 8). Megatron-LM pads to divisible_by x tp, which made the model depend on TP."""
    multiple = divisible_by * math.lcm(VOCAB_PAD_TP, tp)
    return ((vocab_size + multiple - 1) // multiple) * multiple


def data_parallel_size(cfg: Config, world_size: int) -> int:
    """world / (tp * cp * pp)."""
    return world_size // (cfg.parallel.tp * cfg.parallel.cp * cfg.parallel.pp)


def num_micro_batches(cfg: Config, world_size: int) -> int:
    """Micro-batches per optimizer step on each data-parallel rank."""
    dp = data_parallel_size(cfg, world_size)
    return cfg.data.global_batch_size // (cfg.data.micro_batch_size * dp)


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def stage_layers(cfg: Config) -> list[int]:
    """Layers of each pipeline stage: first/last as configured, the other stages split the rest evenly."""
    m, p = cfg.model, cfg.parallel
    first, last = p.first_stage_layers, p.last_stage_layers
    middle = p.pp - (first is not None) - (last is not None)
    rest = m.num_layers - (first or 0) - (last or 0)
    split = [rest // middle] * middle if middle > 0 else []
    return ([first] if first is not None else []) + split + ([last] if last is not None else [])


def _check_pipeline(cfg: Config, fail) -> None:
    m, p = cfg.model, cfg.parallel
    if p.pp == 1:
        if p.vpp is not None or p.first_stage_layers is not None or p.last_stage_layers is not None:
            fail("parallel.vpp / first_stage_layers / last_stage_layers need parallel.pp > 1")
        return
    uneven = p.first_stage_layers is not None or p.last_stage_layers is not None
    if p.vpp is not None:
        if p.vpp < 2:
            fail(f"parallel.vpp={p.vpp}: virtual stages per rank must be >= 2 (or null for plain 1F1B)")
        if uneven:
            fail("parallel.vpp with first_stage_layers/last_stage_layers: megatron-core's interleaved "
                 "schedule needs an even split here; drop one or the other")
        if m.num_layers % (p.pp * p.vpp):
            fail(f"model.num_layers={m.num_layers} is not divisible by parallel.pp x parallel.vpp = "
                 f"{p.pp * p.vpp}; every virtual stage needs the same number of layers")
        return
    if not uneven:
        if m.num_layers % p.pp:
            fail(f"model.num_layers={m.num_layers} is not divisible by parallel.pp={p.pp}; choose pp that "
                 "divides the layers, or set parallel.first_stage_layers / last_stage_layers")
        return
    middle = p.pp - (p.first_stage_layers is not None) - (p.last_stage_layers is not None)
    rest = m.num_layers - (p.first_stage_layers or 0) - (p.last_stage_layers or 0)
    if rest < 0 or (middle and rest % middle) or (not middle and rest):
        fail(f"parallel.first_stage_layers={p.first_stage_layers}, last_stage_layers={p.last_stage_layers}: "
             f"the other {middle} stage(s) must split the remaining {rest} of model.num_layers={m.num_layers} "
             "layers evenly")
    if min(stage_layers(cfg)) < 1:
        fail(f"every pipeline stage needs at least one layer; stages would get {stage_layers(cfg)}")


def validate_config(cfg: Config, world_size: int = 1) -> None:
    """Raise ConfigError naming the key when `cfg` cannot run on `world_size` ranks."""
    m, p, d = cfg.model, cfg.parallel, cfg.data

    def fail(msg: str) -> None:
        raise ConfigError(msg)

    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            fail(f"{key}={_get(cfg, key)!r} is not one of {list(allowed)}")
    for key in ("model.num_layers", "model.hidden_size", "model.ffn_hidden_size", "model.num_attention_heads",
                "model.num_query_groups", "parallel.tp", "parallel.cp", "parallel.pp", "data.seq_length",
                "data.micro_batch_size", "data.global_batch_size", "train.iters"):
        if _get(cfg, key) < 1:
            fail(f"{key}={_get(cfg, key)} must be a positive integer")
    for key in ("model.hidden_dropout", "model.attention_dropout"):
        if not 0.0 <= _get(cfg, key) < 1.0:
            fail(f"{key}={_get(cfg, key)} must be in [0, 1)")
    if not 0.0 <= d.max_oversize_fraction <= 1.0:
        fail(f"data.max_oversize_fraction={d.max_oversize_fraction} must be in [0, 1] (1 turns the check off)")
    if m.hidden_size % m.num_attention_heads:
        fail(f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
             f"{m.num_attention_heads}; pick a head count that divides the width")
    if m.num_attention_heads % m.num_query_groups:
        fail(f"model.num_attention_heads={m.num_attention_heads} is not divisible by model.num_query_groups="
             f"{m.num_query_groups} (KV heads); GQA needs whole groups of query heads")
    if m.num_attention_heads % p.tp:
        fail(f"model.num_attention_heads={m.num_attention_heads} is not divisible by parallel.tp={p.tp}; "
             "choose a tensor-parallel size that divides the head count")
    if m.num_query_groups % p.tp and p.tp % m.num_query_groups:
        fail(f"model.num_query_groups={m.num_query_groups} and parallel.tp={p.tp}: one must divide the other")
    if m.ffn_hidden_size % p.tp:
        fail(f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tp={p.tp}")
    if d.source == "synthetic" and d.synthetic_vocab > m.vocab_size:
        fail(f"data.synthetic_vocab={d.synthetic_vocab} exceeds model.vocab_size={m.vocab_size} "
             f"(highest token id must be below the vocab); lower data.synthetic_vocab")
    _check_pipeline(cfg, fail)
    model_parallel = p.tp * p.cp * p.pp
    if world_size % model_parallel:
        fail(f"world size {world_size} is not divisible by parallel.tp*cp*pp = {p.tp}*{p.cp}*{p.pp} = "
             f"{model_parallel}; launch a multiple of {model_parallel} ranks or change the layout")
    if d.seq_length % (2 * p.cp) and p.cp > 1:
        fail(f"data.seq_length={d.seq_length} is not divisible by 2*parallel.cp={2 * p.cp} "
             "(context parallelism splits every sample into 2*cp chunks)")
    if p.sequence_parallel and p.tp == 1:
        fail("parallel.sequence_parallel=true needs parallel.tp > 1; set one or the other")
    if p.sequence_parallel and d.seq_length % p.tp:
        fail(f"data.seq_length={d.seq_length} is not divisible by parallel.tp={p.tp} "
             "(sequence parallelism shards the sequence over tensor-parallel ranks)")
    dp = data_parallel_size(cfg, world_size)
    if d.global_batch_size % (d.micro_batch_size * dp):
        fail(f"data.global_batch_size={d.global_batch_size} is not divisible by data.micro_batch_size"
             f"={d.micro_batch_size} x data-parallel size {dp}; make it a multiple of "
             f"{d.micro_batch_size * dp}")
    if d.source == "shards" and not d.sources:
        fail("data.source=shards needs data.sources: a list of {prefix: PATH, weight: W}")
    for i, src in enumerate(d.sources):
        prefixes = src.prefix if isinstance(src.prefix, list) else [src.prefix]
        if not prefixes or not all(isinstance(x, str) and x for x in prefixes):
            fail(f"data.sources[{i}].prefix={src.prefix!r}: give the shard prefix (PATH without .bin/.idx) "
                 "or a list of them")
        if not src.weight > 0:
            fail(f"data.sources[{i}].weight={src.weight} must be > 0 (drop the source to leave it out)")
    if cfg.optimizer.warmup_iters > (cfg.optimizer.decay_iters or cfg.train.iters):
        fail(f"optimizer.warmup_iters={cfg.optimizer.warmup_iters} is longer than the schedule "
             f"(optimizer.decay_iters or train.iters = {cfg.optimizer.decay_iters or cfg.train.iters})")
    if cfg.optimizer.min_lr > cfg.optimizer.lr:
        fail(f"optimizer.min_lr={cfg.optimizer.min_lr} is above optimizer.lr={cfg.optimizer.lr}")
    if not cfg.dpo.beta > 0:
        fail(f"dpo.beta={cfg.dpo.beta} must be > 0 (typical: 0.1)")
    if not cfg.dpo.sft_weight >= 0:
        fail(f"dpo.sft_weight={cfg.dpo.sft_weight} must be >= 0 (0 turns the next-token loss off)")
    if not 0 <= cfg.dpo.valid_fraction < 1:
        fail(f"dpo.valid_fraction={cfg.dpo.valid_fraction} must be in [0, 1) (0.05 holds out 5% of the pairs)")
    if p.recompute_num_layers < 1 or m.num_layers % p.recompute_num_layers:
        fail(f"parallel.recompute_num_layers={p.recompute_num_layers} must divide model.num_layers={m.num_layers}")
