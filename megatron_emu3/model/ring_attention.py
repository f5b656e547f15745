"""Ring attention over the zigzag context-parallel split: causal, document-masked, GQA, exact backward.

Context parallelism without Transformer Engine (docs/context_parallel.md has the full story).
A sample of S tokens is cut into 2c chunks; CP rank r holds chunks r and 2c-1-r, concatenated
(`zigzag_split`). Queries stay put; K/V travel around the ring (rank r sends to r+1, receives from
r-1), so after c steps every rank has seen every K/V block. Each (query chunk, key chunk) block is
computed with explicit matmuls, masked with *global* positions (causal) and segment ids (same
document), and merged into the running output with log-sum-exp (online softmax). Blocks that are
entirely masked (a future chunk, or documents that end before the queries' documents start) are
skipped. The backward recomputes each block from the saved log-sum-exp (flash-attention style);
dK/dV accumulators (fp32 for bf16 inputs) travel around the ring one step behind their K/V and
arrive back at their owner after one extra hop.

GQA: queries are regrouped as [b, G, H/G, s, d] so each of the G K/V heads is used by its H/G query
heads in one matmul; K/V are never repeated.

Public API:
- `ring_attention(q, k, v, segment_ids, cp_group, softmax_scale=None)` on [b, heads, s_local, d];
- `RingCoreAttention`: drop-in for megatron-core's `DotProductAttention` in a layer spec, whose
  `attention_mask` argument is this rank's LOCAL segment ids [b, s_local] (int), not a boolean mask;
- the zigzag layout itself lives in `batch/zigzag.py` (one implementation for data and attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

from megatron_emu3.batch.zigzag import zigzag_chunks

SCORE_TILE_ELEMENTS = 1 << 26
"""Most attention-score elements one block materialises at once (fp32: 256 MiB). Longer blocks are
processed in query-row tiles, which bounds peak memory at 131k-token contexts."""

_KV_TAG, _GRAD_TAG = 0, 1  # P2P tags: K/V blocks and dK/dV accumulators (gloo matches on tags)


# ----------------------------------------------------------------------------------------------
# Ring communication and the block plan


class _Ring:
    """This rank's place in the CP group; `shift` sends to rank+1 and receives from rank-1."""

    def __init__(self, group: Optional[dist.ProcessGroup]):
        self.group = group
        self.size = 1 if group is None else dist.get_world_size(group)
        self.rank = 0 if group is None else dist.get_rank(group)
        if self.size > 1:
            self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
            self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def shift(self, pairs: list[tuple[torch.Tensor, torch.Tensor, int]]) -> list:
        """Start sending each `send` to the next rank and receiving `recv` from the previous one.

        Sends and receives go in one `batch_isend_irecv` (NCCL deadlocks on a ring of bare sends
        and receives); every rank builds the same list, so messages match in order and by tag.
        """
        ops = []
        for send, recv, tag in pairs:
            ops.append(dist.P2POp(dist.isend, send, self.next, self.group, tag))
            ops.append(dist.P2POp(dist.irecv, recv, self.prev, self.group, tag))
        return dist.batch_isend_irecv(ops) if ops else []

    def all_gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.size == 1:
            return [x]
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return parts


def _wait(requests: list) -> None:
    for request in requests:
        request.wait()


@dataclass(frozen=True)
class _Block:
    """One (query half, key half) block to compute at some ring step."""

    q_half: int  # 0 or 1: which of this rank's two query chunks
    kv_half: int  # 0 or 1: which of the visiting K/V's two chunks
    q_chunk: int  # global chunk indices, for the segment ids
    kv_chunk: int
    diagonal: bool  # same chunk: causal inside the block
    needs_segments: bool  # some sample has more than one document across the two chunks


def _chunk_segments(segment_ids: torch.Tensor, ring: _Ring) -> list[torch.Tensor]:
    """Segment ids [b, chunk] of all 2c global chunks, gathered from every CP rank."""
    chunks: list[Optional[torch.Tensor]] = [None] * (2 * ring.size)
    for rank, part in enumerate(ring.all_gather(segment_ids)):
        first, second = zigzag_chunks(rank, ring.size)
        chunks[first], chunks[second] = part.chunk(2, dim=1)
    return chunks


def _plan(chunk_segments: list[torch.Tensor], ring: _Ring) -> list[list[_Block]]:
    """Blocks to compute at each ring step; entirely masked blocks are left out.

    Uses only each chunk's first and last segment id (ids are non-decreasing), fetched to the host
    in one transfer together with the check that they are non-decreasing.
    """
    full = torch.cat(chunk_segments, dim=1)
    ends = torch.stack([torch.stack([c[:, 0], c[:, -1]], dim=-1) for c in chunk_segments])
    decreasing = (full[:, 1:] < full[:, :-1]).any().to(ends.dtype).view(1)
    host = torch.cat([ends.flatten(), decreasing]).cpu()
    if host[-1]:
        raise ValueError("segment ids must be non-decreasing along each sample (one id per document, "
                         "pads in their own segment); got a decreasing step")
    ends = host[:-1].view(ends.shape)  # [2c, b, 2]: first and last id of each chunk
    plan = []
    q_chunks = zigzag_chunks(ring.rank, ring.size)
    for step in range(ring.size):
        kv_chunks = zigzag_chunks((ring.rank - step) % ring.size, ring.size)
        blocks = []
        for q_half, qc in enumerate(q_chunks):
            for kv_half, kc in enumerate(kv_chunks):
                if kc > qc:  # a future chunk: causally masked
                    continue
                q_first, q_last = ends[qc, :, 0], ends[qc, :, 1]
                k_first, k_last = ends[kc, :, 0], ends[kc, :, 1]
                if bool((k_last < q_first).all()):  # every key's document ended before the queries'
                    continue
                one_doc = bool(((q_first == q_last) & (k_first == k_last) & (q_first == k_first)).all())
                blocks.append(_Block(q_half, kv_half, qc, kc, kc == qc, not one_doc))
        plan.append(blocks)
    return plan


def _block_mask(block: _Block, chunk_segments: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """Allowed (True) pairs [b, Lq, Lk] of a block, or None when everything is allowed."""
    seg_q, seg_k = chunk_segments[block.q_chunk], chunk_segments[block.kv_chunk]
    b, length = seg_q.shape
    mask = None
    if block.needs_segments:
        mask = seg_q[:, :, None] == seg_k[:, None, :]
    if block.diagonal:
        causal = torch.ones(length, length, dtype=torch.bool, device=seg_q.device).tril_()
        mask = causal.expand(b, length, length) if mask is None else mask & causal
    return mask


DIAGONAL_TILES = 4
"""Diagonal (causal) blocks are cut into at least this many row tiles, each computed only against
the keys up to its last row: 10/16 of the block's work instead of all of it."""


def _tiles(block: _Block, length: int, heads_x_batch: int):
    """(query rows, key columns) slices of a block, each tile's scores under SCORE_TILE_ELEMENTS."""
    rows = max(1, min(length, SCORE_TILE_ELEMENTS // max(1, heads_x_batch * length)))
    if block.diagonal:
        rows = min(rows, -(-length // DIAGONAL_TILES))
    for start in range(0, length, rows):
        stop = min(start + rows, length)
        yield slice(start, stop), slice(0, stop if block.diagonal else length)


def _finite(x: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(x == -math.inf, 0.0)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and accumulation precision: fp32 for half types, else the input's own (fp32/fp64)."""
    return torch.promote_types(dtype, torch.float32)


def _scores(q_t, k_e, mask_t) -> torch.Tensor:
    """Masked scores [b, G, n, T, Lk] (accumulation dtype) for pre-scaled q_t [b, G, n, T, d], keys
    [b, G, Lk, d]."""
    b, g, n, t, d = q_t.shape
    s = torch.matmul(q_t.reshape(b, g, n * t, d), k_e.transpose(-1, -2)).view(b, g, n, t, -1)
    s = s.to(_acc_dtype(s.dtype))
    if mask_t is not None:
        s.masked_fill_(~mask_t[:, None, None], -math.inf)
    return s


# ----------------------------------------------------------------------------------------------
# Forward and backward


def _to_groups(x: torch.Tensor, groups: int, scale: Optional[float] = None) -> torch.Tensor:
    """[b, H, s, d] -> a new contiguous [b, G, 2, H/G, s/2, d] (per K/V head, per local chunk), times
    `scale` when given."""
    b, h, s, d = x.shape
    out = torch.empty(b, groups, 2, h // groups, s // 2, d, dtype=x.dtype, device=x.device)
    out.copy_(x.reshape(b, groups, h // groups, 2, s // 2, d).permute(0, 1, 3, 2, 4, 5))
    return out if scale is None else out.mul_(scale)


def _from_groups(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `_to_groups`."""
    b, g, _, n, half, d = x.shape
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, g * n, 2 * half, d)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, segment_ids, ring: _Ring, scale: float):
        b, h, s, d = q.shape
        groups, half = k.shape[1], s // 2
        chunk_segments = _chunk_segments(segment_ids, ring)
        plan = _plan(chunk_segments, ring)
        qg = _to_groups(q, groups, scale)  # queries pre-scaled: scores = qg @ k^T
        kv = kv_own = torch.stack([k, v])  # one message per hop
        acc = _acc_dtype(q.dtype)
        out = torch.zeros(qg.shape, dtype=acc, device=q.device)
        lse = torch.full(qg.shape[:-1], -math.inf, dtype=acc, device=q.device)
        for step in range(ring.size):
            requests, kv_next = [], None
            if step < ring.size - 1:
                kv_next = torch.empty_like(kv)
                requests = ring.shift([(kv, kv_next, _KV_TAG)])
            for block in plan[step]:
                mask = _block_mask(block, chunk_segments)
                k_b, v_b = (x[:, :, block.kv_half * half:(block.kv_half + 1) * half] for x in kv)
                for rows, cols in _tiles(block, half, b * h):
                    _forward_tile(qg[:, :, block.q_half, :, rows], k_b[:, :, cols], v_b[:, :, cols],
                                  None if mask is None else mask[:, rows, cols],
                                  out[:, :, block.q_half, :, rows], lse[:, :, block.q_half, :, rows])
            _wait(requests)
            kv = kv_next if kv_next is not None else kv
        result = _from_groups(out.to(q.dtype))
        ctx.save_for_backward(qg, kv_own, result, lse, torch.cat(chunk_segments, dim=1))
        ctx.ring, ctx.scale, ctx.plan = ring, scale, plan
        return result

    @staticmethod
    def backward(ctx, grad_out):
        qg, kv, out, lse, full_segments = ctx.saved_tensors
        ring, scale, plan = ctx.ring, ctx.scale, ctx.plan
        chunk_segments = list(full_segments.chunk(2 * ring.size, dim=1))
        b, groups, _, n, half, d = qg.shape
        h = groups * n
        do = _to_groups(grad_out.to(qg.dtype), groups)
        acc = _acc_dtype(qg.dtype)
        delta = (do.to(acc) * _to_groups(out, groups).to(acc)).sum(-1)  # rowsum(dO * O)
        dq = torch.zeros(qg.shape, dtype=acc, device=qg.device)
        dkv = None  # dK/dV accumulator (fp32 or fp64) of the K/V block held at this step
        for step in range(ring.size):
            pairs, kv_next, dkv_recv = [], None, None
            if step < ring.size - 1:
                kv_next = torch.empty_like(kv)
                pairs.append((kv, kv_next, _KV_TAG))
            if step > 0:  # pass on the previous block's accumulator; receive this block's
                dkv_recv = torch.empty_like(dkv)
                pairs.append((dkv, dkv_recv, _GRAD_TAG))
            requests = ring.shift(pairs)
            dkv_step = torch.zeros(kv.shape, dtype=acc, device=kv.device)
            for block in plan[step]:
                mask = _block_mask(block, chunk_segments)
                half_cols = slice(block.kv_half * half, (block.kv_half + 1) * half)
                k_b, v_b = kv[0][:, :, half_cols], kv[1][:, :, half_cols]
                dk_b, dv_b = dkv_step[0][:, :, half_cols], dkv_step[1][:, :, half_cols]
                a = block.q_half
                for rows, cols in _tiles(block, half, b * h):
                    _backward_tile(
                        qg[:, :, a, :, rows], k_b[:, :, cols], v_b[:, :, cols],
                        None if mask is None else mask[:, rows, cols],
                        lse[:, :, a, :, rows], do[:, :, a, :, rows], delta[:, :, a, :, rows],
                        dq[:, :, a, :, rows], dk_b[:, :, cols], dv_b[:, :, cols],
                    )
            _wait(requests)
            dkv = dkv_step if dkv_recv is None else dkv_recv.add_(dkv_step)
            kv = kv_next if kv_next is not None else kv
        if ring.size > 1:  # the last accumulator belongs to the next rank: one more hop home
            home = torch.empty_like(dkv)
            _wait(ring.shift([(dkv, home, _GRAD_TAG)]))
            dkv = home
        dq = _from_groups(dq.mul_(scale)).to(qg.dtype)  # d(scores)/dq = scale * k
        return dq, dkv[0].to(kv.dtype), dkv[1].to(kv.dtype), None, None, None


def _forward_tile(q_t, k_e, v_e, mask_t, out_t, lse_t) -> None:
    """Merge one block's attention into the running output `out_t` and log-sum-exp `lse_t`.

    Rows with nothing allowed in this block have max -inf: they contribute p = 0 and lse -inf.
    """
    b, g, n, t, d = q_t.shape
    p = _scores(q_t, k_e, mask_t)
    row_max = _finite(p.amax(dim=-1))
    p.sub_(row_max[..., None]).exp_()  # unnormalised probabilities, in place of the scores
    block_lse = row_max + p.sum(dim=-1).log()
    block_out = torch.matmul(p.to(v_e.dtype).view(b, g, n * t, -1), v_e).view(b, g, n, t, d)
    new_lse = torch.logaddexp(lse_t, block_lse)
    safe = _finite(new_lse)
    out_t.mul_(torch.exp(lse_t - safe)[..., None])
    out_t.add_(block_out.to(p.dtype) * torch.exp(row_max - safe)[..., None])
    lse_t.copy_(new_lse)


def _backward_tile(q_t, k_e, v_e, mask_t, lse_t, do_t, delta_t, dq_t, dk_e, dv_e) -> None:
    """Add one block's contribution to dQ/scale (rows of this rank) and dK/dV (the visiting block)."""
    b, g, n, t, d = q_t.shape
    dtype = q_t.dtype
    p = _scores(q_t, k_e, mask_t).sub_(lse_t[..., None]).exp_()  # final probabilities; masked: 0
    p_flat = p.view(b, g, n * t, -1)
    do_flat = do_t.reshape(b, g, n * t, d)
    dv_e.add_(torch.matmul(p_flat.transpose(-1, -2).to(dtype), do_flat))  # sums over the n heads
    ds = torch.matmul(do_flat, v_e.transpose(-1, -2)).view(b, g, n, t, -1).to(p.dtype)
    ds = ds.sub_(delta_t[..., None]).mul_(p).view(b, g, n * t, -1).to(dtype)  # p * (dP - rowsum(dO*O))
    dq_t.add_(torch.matmul(ds, k_e).view(b, g, n, t, d))
    dk_e.add_(torch.matmul(ds.transpose(-1, -2), q_t.reshape(b, g, n * t, d)))  # q_t carries the scale


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_ids: torch.Tensor,
    cp_group: Optional[dist.ProcessGroup],
    softmax_scale: Optional[float] = None,
) -> torch.Tensor:
    """Causal, document-masked attention over the zigzag CP split; differentiable in q, k, v.

    q [b, H, s_local, d]; k, v [b, G, s_local, d] with H % G == 0 (GQA: query head h uses K/V head
    h // (H/G)); segment_ids [b, s_local] int, this rank's LOCAL ids in zigzag order (the same split
    as q/k/v), non-decreasing along the full sample. A query attends to keys at global positions
    <= its own within its own segment. `cp_group` None means no context parallelism (one rank holds
    the whole sample as chunks 0 and 1). Returns [b, H, s_local, d] in q's dtype (softmax and
    accumulation in fp32 for bf16/fp16 inputs, in the input's precision for fp32/fp64).
    """
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"ring_attention expects q [b, H, s, d] and k, v [b, G, s, d]; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, h, s, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, s, d) or h % k.shape[1]:
        raise ValueError(f"k/v {tuple(k.shape)} do not fit q {tuple(q.shape)} (same b, s, d; "
                         "query heads a multiple of K/V heads)")
    if segment_ids.shape != (b, s) or segment_ids.is_floating_point() or segment_ids.dtype == torch.bool:
        raise ValueError(f"segment_ids must be integer [b, s_local] = [{b}, {s}]; got "
                         f"{segment_ids.dtype} {tuple(segment_ids.shape)}")
    if s % 2:
        raise ValueError(f"local sequence length {s} is odd; it must hold two equal zigzag chunks")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    return _RingAttention.apply(q, k, v, segment_ids, _Ring(cp_group), scale)


# ----------------------------------------------------------------------------------------------
# megatron-core module


class RingCoreAttention(MegatronModule):
    """Context-parallel core attention for a megatron-core layer spec (no Transformer Engine).

    Same constructor as megatron-core's `DotProductAttention`. `forward(query, key, value,
    attention_mask)` takes query [s_local, b, H_per_tp, d], key/value [s_local, b, G_per_tp, d] and
    returns [s_local, b, H_per_tp * d]. **`attention_mask` is this CP rank's LOCAL segment ids,
    an int tensor [b, s_local]** in zigzag order (not megatron's boolean mask: a [b, 1, S, S] mask
    cannot be split over CP ranks and would be quadratic at 131k tokens); None means one document
    (plain causal). The CP group is `pg_collection.cp` when a collection is given, else
    megatron-core's context-parallel group (none initialised: no context parallelism).

    Attention dropout is not supported while training: dropping probabilities exactly would need
    the same random mask regenerated per block in the backward on every rank; a non-zero rate
    raises instead of silently training a different model.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if attention_type != "self":
            raise ValueError(f"RingCoreAttention supports self-attention only, got {attention_type!r}")
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"RingCoreAttention is causal (plus document masks); got {attn_mask_type}")
        if cp_comm_type not in (None, "p2p"):
            raise ValueError(f"RingCoreAttention communicates point-to-point (cp_comm_type 'p2p'); "
                             f"got {cp_comm_type!r}: use Transformer Engine for a2a/all_gather")
        tp_size = config.tensor_model_parallel_size
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.groups_per_partition = divide(config.num_query_groups, tp_size)
        self.softmax_scale = softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        if pg_collection is not None:
            self.cp_group = getattr(pg_collection, "cp", None)
        else:
            self.cp_group = parallel_state.get_context_parallel_group(check_initialized=False)
        cp_size = 1 if self.cp_group is None else dist.get_world_size(self.cp_group)
        if cp_size != config.context_parallel_size:
            raise ValueError(f"config.context_parallel_size={config.context_parallel_size} but the "
                             f"context-parallel group has {cp_size} ranks; initialise megatron-core's "
                             "parallel state (parallel/setup.py) or pass pg_collection with .cp")

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("RingCoreAttention takes local segment ids as attention_mask, not a bias "
                             "or packed_seq_params")
        if self.training and self.dropout_p > 0:
            raise ValueError(f"RingCoreAttention does not implement attention dropout (rate "
                             f"{self.dropout_p}); set model.attention_dropout=0 to train with "
                             "context parallelism without Transformer Engine")
        s, b = query.shape[:2]
        segment_ids = attention_mask
        if segment_ids is None:
            segment_ids = torch.zeros(b, s, dtype=torch.long, device=query.device)
        elif segment_ids.dtype == torch.bool or tuple(segment_ids.shape) != (b, s):
            raise ValueError(
                f"RingCoreAttention expects attention_mask = this CP rank's local segment ids, int "
                f"[b, s_local] = [{b}, {s}]; got {segment_ids.dtype} {tuple(segment_ids.shape)}. "
                "Pass zigzag_split(segment_ids) instead of a boolean mask")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [s, b, h, d] -> [b, h, s, d]
        out = ring_attention(q, k, v, segment_ids, self.cp_group, self.softmax_scale)
        b, h, s, d = out.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, h * d)
