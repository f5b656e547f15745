"""Ring-attention checks that run inside spawned gloo ranks (importable by the spawn start method).

`run_all(cp)` initialises megatron-core with context_parallel_size=cp (tiny recipe) and returns this
rank's max absolute errors against full-sequence references:
- "ring": `ring_attention` vs torch SDPA with the causal + same-document mask, fp64 reference, for
  every document layout x GQA ratio, in fp64 and fp32 (and one bf16 and one row-tiled case);
- "ring_strided" (cp=4 only): the same at CP=2 over groups of non-adjacent ranks {0, 2}, {1, 3};
- "model": a tiny megatron-core `GPTModel` whose core attention is `RingCoreAttention`, fed this
  rank's zigzag slice, vs the same weights with `SDPACoreAttention` on the whole sequence (per-token
  loss, and every parameter gradient summed over CP ranks).
The layouts and reference helpers are pure and also used by the single-process tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RECIPE = str(Path(__file__).resolve().parents[2] / "examples" / "recipes" / "tiny.yaml")
GQA = ((2, 2), (4, 2), (8, 2))  # (query heads, K/V heads): ratios 1, 2, 4
HEAD_DIM = 8


def _from_lengths(lengths: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def layouts(seq_len: int, chunk: int) -> dict[str, torch.Tensor]:
    """Segment ids [2, seq_len] per document layout (two samples each, different where it matters).

    `chunk` is the zigzag chunk length the layouts are placed against; needs seq_len >= 4 * chunk
    and seq_len >= 32.
    """
    if seq_len < max(32, 4 * chunk):
        raise ValueError(f"layouts need seq_len >= max(32, 4 * chunk); got {seq_len}, {chunk}")
    s, c = seq_len, chunk
    one = torch.zeros(s, dtype=torch.long)
    many_a = _from_lengths([3, 9, 1, 7, 2, s - 22])
    many_b = _from_lengths([c + 1, 2, s - c - 3])
    spanning = _from_lengths([c - 2, 2 * c + 3, s - 3 * c - 1])  # doc 1 crosses three chunk borders
    pads = _from_lengths([s // 2, s // 2 - 5, 5])  # last segment = pads
    mostly_pads = _from_lengths([3, s - 3])
    return {
        "one_doc": torch.stack([one, one]),
        "many_docs": torch.stack([many_a, many_b]),
        "spanning": torch.stack([spanning, many_b]),
        "pads": torch.stack([pads, mostly_pads]),
        "singletons": torch.stack([torch.arange(s), torch.arange(s)]),  # every token its own document
        "mixed_batch": torch.stack([one, torch.arange(s)]),
    }


def reference(q, k, v, segment_ids, grad_out):
    """Full-sequence output and (dq, dk, dv) from torch SDPA with the causal + same-document mask."""
    from megatron_emu3.batch.inputs import document_attention_mask

    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=~document_attention_mask(segment_ids),
                                         enable_gqa=True)
    return out.detach(), torch.autograd.grad(out, (q, k, v), grad_out)


def ring_errors(q, k, v, segment_ids, grad_out, cp_group, cp_rank, cp_size, dtype) -> dict[str, float]:
    """Max |ring - reference| of out, dq, dk, dv on this rank's zigzag slice (inputs in fp64)."""
    from megatron_emu3.batch.zigzag import zigzag_split
    from megatron_emu3.model.ring_attention import ring_attention

    ref_out, ref_grads = reference(q, k, v, segment_ids, grad_out)
    local = [zigzag_split(t, cp_rank, cp_size, dim=2).to(dtype).requires_grad_() for t in (q, k, v)]
    out = ring_attention(*local, zigzag_split(segment_ids, cp_rank, cp_size, dim=1), cp_group)
    grads = torch.autograd.grad(out, local, zigzag_split(grad_out, cp_rank, cp_size, dim=2).to(dtype))
    errors = {"out": (out.double() - zigzag_split(ref_out, cp_rank, cp_size, dim=2)).abs().max().item()}
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        errors[name] = (got.double() - zigzag_split(want, cp_rank, cp_size, dim=2)).abs().max().item()
    return errors


def random_inputs(seed: int, heads: int, groups: int, seq_len: int, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, HEAD_DIM, generator=g, dtype=torch.float64)
    k = torch.randn(batch, groups, seq_len, HEAD_DIM, generator=g, dtype=torch.float64)
    v = torch.randn(batch, groups, seq_len, HEAD_DIM, generator=g, dtype=torch.float64)
    return q, k, v, torch.randn(batch, heads, seq_len, HEAD_DIM, generator=g, dtype=torch.float64)


def ring_cases(cp_group, cp_rank: int, cp_size: int) -> dict[str, dict[str, float]]:
    """Errors per case name 'layout/HxG/dtype' (every rank builds the same full inputs)."""
    import megatron_emu3.model.ring_attention as ring_module

    seq_len = 16 * cp_size  # chunks of 8 tokens
    results = {}
    for i, (layout, segments) in enumerate(layouts(seq_len, seq_len // (2 * cp_size)).items()):
        for heads, groups in GQA:
            inputs = random_inputs(100 * i + heads, heads, groups, seq_len)
            for dtype in (torch.float64, torch.float32):
                name = f"{layout}/{heads}x{groups}/{str(dtype)[6:]}"
                results[name] = ring_errors(*inputs[:3], segments, inputs[3], cp_group, cp_rank, cp_size, dtype)
    inputs = random_inputs(7, 4, 2, seq_len)
    segments = layouts(seq_len, seq_len // (2 * cp_size))["spanning"]
    results["spanning/4x2/bfloat16"] = ring_errors(*inputs[:3], segments, inputs[3], cp_group, cp_rank,
                                                    cp_size, torch.bfloat16)
    saved = ring_module.SCORE_TILE_ELEMENTS
    ring_module.SCORE_TILE_ELEMENTS = 2 * 4 * 8 * 3  # 3-row tiles of 8-row chunks: uneven last tile
    try:
        results["spanning/4x2/float64/tiled"] = ring_errors(*inputs[:3], segments, inputs[3], cp_group,
                                                            cp_rank, cp_size, torch.float64)
    finally:
        ring_module.SCORE_TILE_ELEMENTS = saved
    return results


def _gpt(mcore_config, cfg, core_attention, pg_collection=None):
    """Tiny GPTModel like `model.build.build_model`, with `core_attention` in the local layer spec."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    from megatron_emu3.config.validation import padded_vocab_size
    from megatron_emu3.model.norm import RMSNorm
    from megatron_emu3.model.spec import local_layer_spec

    layer = local_layer_spec()
    layer.submodules.self_attention.submodules.core_attention = core_attention
    spec = TransformerBlockSubmodules(layer_specs=[layer] * cfg.model.num_layers, layer_norm=RMSNorm)
    return GPTModel(
        config=mcore_config, transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, 1),
        max_sequence_length=cfg.data.seq_length, pre_process=True, post_process=True,
        parallel_output=True, share_embeddings_and_output_weights=not cfg.model.untie_embeddings,
        position_embedding_type="rope", rotary_base=cfg.model.rope_base, pg_collection=pg_collection,
    )


class _NoPinnedMemory(TorchFunctionMode):
    """Drops `pin_memory=True` (megatron-core's RoPE CP split asks for it; CPU-only torch refuses).

    Test-local stand-in for a `parallel/cpu_compat.py` patch, which that module does not have yet.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("pin_memory") and not torch.cuda.is_available():
            kwargs["pin_memory"] = False
        return func(*args, **kwargs)


def model_errors(cfg, cp_group, cp_rank: int, cp_size: int) -> dict[str, float]:
    """GPTModel with RingCoreAttention at CP=cp_size vs SDPACoreAttention on the full sequence."""
    import copy

    import torch.distributed as dist
    from megatron.core.process_groups_config import ProcessGroupCollection

    from megatron_emu3.config.to_mcore import transformer_config
    from megatron_emu3.batch.inputs import document_attention_mask
    from megatron_emu3.model.attention import SDPACoreAttention
    from megatron_emu3.batch.zigzag import zigzag_split
    from megatron_emu3.model.ring_attention import RingCoreAttention

    ring_model = _gpt(transformer_config(cfg), cfg, RingCoreAttention)
    # Reference: same weights, no CP. Its own one-rank "CP group" keeps RoPE unsplit.
    singles = [dist.new_group([r], backend="gloo") for r in range(dist.get_world_size())]
    pgs = ProcessGroupCollection.use_mpu_process_groups()
    pgs.cp = singles[dist.get_rank()]
    ref_cfg = copy.deepcopy(cfg)
    ref_cfg.parallel.cp = 1
    ref_model = _gpt(transformer_config(ref_cfg), ref_cfg, SDPACoreAttention, pgs)
    ref_model.load_state_dict(ring_model.state_dict())

    seq_len, g = cfg.data.seq_length, torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 64, (2, seq_len), generator=g)
    labels = torch.randint(0, 64, (2, seq_len), generator=g)
    segments = layouts(seq_len, seq_len // (2 * cp_size))["spanning"]
    positions = torch.arange(seq_len).expand(2, seq_len)
    ref_loss = ref_model(tokens, positions, document_attention_mask(segments), labels=labels)
    ref_loss.sum().backward()
    local = [zigzag_split(t, cp_rank, cp_size, dim=1) for t in (tokens, positions, segments, labels)]
    with _NoPinnedMemory():
        loss = ring_model(local[0], local[1], local[2], labels=local[3])
    loss.sum().backward()
    errors = {"loss": (loss - zigzag_split(ref_loss, cp_rank, cp_size, dim=1)).abs().max().item()}
    ref_params = dict(ref_model.named_parameters())
    for name, param in ring_model.named_parameters():
        grad = param.grad.clone()
        dist.all_reduce(grad, group=cp_group)  # what DDP does over the data x context-parallel group
        errors[f"grad {name}"] = (grad - ref_params[name].grad).abs().max().item()
    errors["max |ref grad|"] = max(p.grad.abs().max().item() for p in ref_params.values())
    return errors


def run_all(cp: int) -> dict:
    """Everything for one CP size in one spawn (each spawn costs ~10 s of imports)."""
    from megatron.core import parallel_state

    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.parallel.env import dist_env_from_environ
    from megatron_emu3.parallel.setup import destroy_distributed, init_distributed

    # One thread per rank: the launcher sets OMP_NUM_THREADS after torch is imported, too late, and
    # 4 ranks x 2 spinning threads on 2 cores made this 20x slower.
    torch.set_num_threads(1)
    cfg = resolve_config(RECIPE, [f"parallel.cp={cp}"])
    init_distributed(cfg, dist_env_from_environ())
    try:
        group = parallel_state.get_context_parallel_group()
        rank = parallel_state.get_context_parallel_rank()
        results = {"ring": ring_cases(group, rank, cp), "model": model_errors(cfg, group, rank, cp)}
        if cp == 4:  # CP groups of non-adjacent global ranks, as under TP x CP: {0, 2} and {1, 3}
            import torch.distributed as dist

            me = dist.get_rank()
            strided = [dist.new_group(ranks, backend="gloo") for ranks in ([0, 2], [1, 3])][me % 2]
            results["ring_strided"] = ring_cases(strided, me // 2, 2)
        return results
    finally:
        destroy_distributed()
