"""Memory and throughput planner: per-GPU memory and model FLOPs for a config and a layout.

Pure arithmetic over the config (no torch). Conventions, stated wherever a number is printed:
- model FLOPs per token = 6 x (matmul parameters incl. the output layer, excl. the input embedding)
  + 6 x layers x seq x hidden for attention, counting causal attention as half (Megatron-Bridge's
  convention). Emu3-8B: ~50.4 GFLOP/token at 5,120 and ~149.5 at 131,072.
- memory: bf16 weights (2 B/param), fp32 main gradients (4 B), fp32 master weights + Adam m, v
  (12 B; sharded over dp x cp with the distributed optimizer); activations with flash-style attention
  (no s x s scores stored), bf16, per layer per token:
  14 h + 4 h_kv + 6 f bytes (norm inputs, QKV, attention output, MLP in/out, SwiGLU halves, dropout
  masks), divided by tp with sequence parallelism and by cp; full recompute keeps only each layer's
  input (2 h) plus one layer's working set; logits cost 6 B x vocab / tp per token (bf16 + fp32 CE).
  attention_backend=sdpa adds what its CUDA form keeps (model/attention.py): K/V repeated to the
  query's heads (4 x (heads - kv heads) x head_dim B per token per layer) and the document mask with
  its bf16 bias (3 x seq B per token, once per micro-batch); the other backends keep no s x s tensor.
- pipeline parallelism: every stage is planned on its own (its layers; the embedding on the first,
  the output layer, final norm and logits on the last) and the worst stage is the GPU's figure.
  Under 1F1B stage i keeps the activations of pp - i micro-batches in flight; interleaving (vpp
  virtual stages) multiplies that by 1 + (pp - 1) / (pp x vpp) (Megatron-LM's estimate). The pipeline
  bubble, idle time over compute, is (pp - 1) / (vpp x micro-batches per step).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_emu3.config.schema import Config
from megatron_emu3.config.schema import head_dim
from megatron_emu3.config.validation import padded_vocab_size, stage_layers
from megatron_emu3.model.params import count_parameters

GIB = 2**30


@dataclass(frozen=True)
class Layout:
    tp: int
    cp: int
    dp: int
    recompute: str  # none | selective | full
    distributed_optimizer: bool = True
    sequence_parallel: bool = True
    pp: int = 1
    vpp: int | None = None


def pipeline_bubble(pp: int, vpp: int | None, micro_batches: int) -> float:
    """Idle fraction of a pipeline step relative to its compute: (pp - 1) / (vpp x micro-batches)."""
    return (pp - 1) / ((vpp or 1) * micro_batches)


def micro_batches_per_step(cfg: Config, layout: Layout, micro_batch_size: int | None = None) -> int:
    return cfg.data.global_batch_size // ((micro_batch_size or cfg.data.micro_batch_size) * layout.dp)


def model_flops_per_token(cfg: Config, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward), causal attention counted as half."""
    m = cfg.model
    seq = seq_len or cfg.data.seq_length
    counts = count_parameters(m)
    matmul_params = counts["layers"] - 2 * m.hidden_size * m.num_layers + m.vocab_size * m.hidden_size
    return 6.0 * matmul_params + 6.0 * m.num_layers * seq * m.num_attention_heads * head_dim(m)


def activation_bytes_per_token_per_layer(cfg: Config) -> float:
    m = cfg.model
    query_width = m.num_attention_heads * head_dim(m)  # = hidden_size unless model.head_dim says otherwise
    return 14 * m.hidden_size + 4 * (query_width - m.hidden_size) + 4 * m.num_query_groups * head_dim(m) \
        + 6 * m.ffn_hidden_size


def sdpa_repeated_kv_bytes(cfg: Config) -> float:
    """attention_backend=sdpa on CUDA: K and V repeated to the query's heads for the memory-efficient
    kernel (model/attention.py), kept for the backward: bytes per token per layer (bf16)."""
    m = cfg.model
    if cfg.parallel.attention_backend != "sdpa":
        return 0.0
    return 4.0 * (m.num_attention_heads - m.num_query_groups) * head_dim(m)


def sdpa_mask_bytes(cfg: Config, tokens_local: float) -> float:
    """attention_backend=sdpa: the document mask [b, 1, s, s] (bool) and its bf16 additive bias, one
    of each per micro-batch, shared by all layers and not split by TP."""
    if cfg.parallel.attention_backend != "sdpa":
        return 0.0
    return 3.0 * cfg.data.seq_length * tokens_local


def memory_per_gpu(cfg: Config, layout: Layout, micro_batch_size: int | None = None) -> dict[str, float]:
    """Bytes per GPU by part for `layout` (weights, grads, optimizer, activations, logits, total) on
    its fullest pipeline stage; ``stages`` lists every stage's total."""
    stages = memory_per_stage(cfg, layout, micro_batch_size)
    worst = max(stages, key=lambda mem: mem["total"])
    return {**worst, "stages": [mem["total"] for mem in stages]}


def memory_per_stage(cfg: Config, layout: Layout, micro_batch_size: int | None = None) -> list[dict[str, float]]:
    """Bytes per GPU by part for every pipeline stage of `layout`."""
    m = cfg.model
    mbs = micro_batch_size or cfg.data.micro_batch_size
    vocab = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, layout.tp)
    counts = count_parameters(m, vocab)
    embedding = vocab * m.hidden_size
    output = counts["embeddings"] - embedding + counts["final_norm"]
    layers = stage_layers(_with_pipeline(cfg, layout))
    tokens_local = mbs * cfg.data.seq_length / layout.cp
    per_layer = activation_bytes_per_token_per_layer(cfg) * tokens_local / (layout.tp if layout.sequence_parallel else 1)
    out = []
    for stage, n_layers in enumerate(layers):
        first, last = stage == 0, stage == len(layers) - 1
        params = (n_layers * counts["per_layer"] + first * embedding + last * output) / layout.tp
        weights = 2 * params
        grads = 4 * params
        optimizer = 12 * params / (layout.dp * layout.cp if layout.distributed_optimizer else 1)
        repeated_kv = sdpa_repeated_kv_bytes(cfg) * tokens_local / layout.tp
        if layout.recompute == "full":
            one_micro_batch = n_layers * 2 * m.hidden_size * tokens_local / layout.tp + per_layer + repeated_kv
        else:
            one_micro_batch = n_layers * (per_layer + repeated_kv)
            if layout.recompute == "none":
                # attention output of the core kernel is kept twice without recompute (input + output)
                one_micro_batch += n_layers * 2 * m.num_attention_heads * head_dim(m) * tokens_local / layout.tp
        one_micro_batch += sdpa_mask_bytes(cfg, tokens_local)
        in_flight = 1.0
        if layout.pp > 1:
            in_flight = min(layout.pp - stage, micro_batches_per_step(cfg, layout, mbs))
            if layout.vpp:
                in_flight *= 1 + (layout.pp - 1) / (layout.pp * layout.vpp)
        activations = one_micro_batch * in_flight
        logits = 6 * vocab / layout.tp * tokens_local if last else 0.0
        total = weights + grads + optimizer + activations + logits
        out.append({"weights": weights, "grads": grads, "optimizer": optimizer, "activations": activations,
                    "logits": logits, "total": total, "layers": n_layers})
    return out


def _with_pipeline(cfg: Config, layout: Layout) -> Config:
    """`cfg` with the layout's pipeline size (the recipe's first/last stage split kept when it fits)."""
    import dataclasses

    p = cfg.parallel
    keep = layout.pp == p.pp
    parallel = dataclasses.replace(p, pp=layout.pp, vpp=layout.vpp,
                                   first_stage_layers=p.first_stage_layers if keep else None,
                                   last_stage_layers=p.last_stage_layers if keep else None)
    return dataclasses.replace(cfg, parallel=parallel)


def candidate_layouts(cfg: Config, world_size: int, gpus_per_node: int) -> list[Layout]:
    """Every valid layout: tp within a node dividing heads/KV heads, seq divisible by 2*cp, pp dividing
    the layers (with 2 virtual stages when they divide too and the step has micro-batches enough)."""
    m = cfg.model
    out = []
    for tp in (1, 2, 4, 8):
        if tp > gpus_per_node or m.num_attention_heads % tp or (m.num_query_groups % tp and tp % m.num_query_groups):
            continue
        for cp in (1, 2, 4, 8, 16, 32):
            if cp > 1 and cfg.data.seq_length % (2 * cp):
                continue
            for pp in (1, 2, 4, 8, 16):
                if world_size % (tp * cp * pp) or m.num_layers % pp:
                    continue
                dp = world_size // (tp * cp * pp)
                if cfg.data.global_batch_size % (cfg.data.micro_batch_size * dp):
                    continue
                micro_batches = cfg.data.global_batch_size // (cfg.data.micro_batch_size * dp)
                vpps = [None] + ([2] if pp > 1 and m.num_layers % (2 * pp) == 0 and micro_batches >= pp else [])
                for vpp in vpps:
                    for recompute in ("none", "selective", "full"):
                        out.append(Layout(tp, cp, dp, recompute, sequence_parallel=tp > 1, pp=pp, vpp=vpp))
    return out


def relative_cost(cfg: Config, layout: Layout) -> float:
    """Step time relative to an ideal layout: full recompute reruns the forward (~+33%), selective
    recompute only the core attention (~+2%); each extra TP rank adds exposed all-gather/reduce-scatter
    (~5%), each extra CP rank a little exposed ring traffic (~2%, mostly overlapped with attention
    compute); pipeline parallelism adds its bubble and ~2% per stage boundary of exposed P2P."""
    recompute_cost = {"none": 0, "selective": 0.02, "full": 0.33}
    bubble = pipeline_bubble(layout.pp, layout.vpp, micro_batches_per_step(cfg, layout))
    return (recompute_cost[layout.recompute] + 0.05 * (layout.tp - 1) + 0.02 * (layout.cp - 1) + bubble
            + 0.02 * (layout.pp - 1))


def suggest(cfg: Config, world_size: int, gpus_per_node: int, gpu_memory_gib: float,
            headroom: float = 0.85) -> tuple[Layout | None, list[tuple[Layout, dict]]]:
    """The cheapest layout (`relative_cost`) that fits `headroom` of GPU memory on every stage, and all
    candidates with their memory."""
    rows = [(layout, memory_per_gpu(cfg, layout)) for layout in candidate_layouts(cfg, world_size, gpus_per_node)]
    fitting = [(l, mem) for l, mem in rows if mem["total"] <= headroom * gpu_memory_gib * GIB]
    if not fitting:
        return None, rows
    best = min(fitting, key=lambda item: relative_cost(cfg, item[0]))
    return best[0], rows
