"""Forward+backward time of ring attention (CP ranks over gloo, CPU) vs full document-masked SDPA.

For each sequence length S, document count and CP size c, spawns c ranks (one thread each), runs
`ring_attention` on each rank's zigzag slice and reports the slowest rank's median time per
forward+backward; the reference is torch SDPA with the causal + same-document boolean mask on the
whole sequence in one process with the same thread count. Numbers are wall-clock on this machine;
c ranks use c cores, so with c <= cores the ideal ring time is SDPA / c (plus communication).

    .venv/bin/python bench/bench_ring_attention.py --seq 1024,2048,4096 --cp 1,2 --docs 1,8
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from megatron_emu3.batch.inputs import document_attention_mask
from megatron_emu3.batch.zigzag import zigzag_split
from megatron_emu3.model.ring_attention import ring_attention


def inputs(seq_len: int, docs: int, heads: int, groups: int, head_dim: int, batch: int = 1):
    """Random q, k, v, grad_out in fp32 and segment ids for `docs` equal documents."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, seq_len, head_dim, generator=g)
    k = torch.randn(batch, groups, seq_len, head_dim, generator=g)
    v = torch.randn(batch, groups, seq_len, head_dim, generator=g)
    grad = torch.randn(batch, heads, seq_len, head_dim, generator=g)
    segments = (torch.arange(seq_len) * docs // seq_len).expand(batch, seq_len).contiguous()
    return q, k, v, grad, segments


def _time(fn, iters: int, sync=lambda: None) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sdpa_ms(seq_len, docs, heads, groups, head_dim, iters) -> float:
    q, k, v, grad, segments = inputs(seq_len, docs, heads, groups, head_dim)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    allowed = ~document_attention_mask(segments)

    def step():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
        torch.autograd.grad(out, (q, k, v), grad)

    return 1e3 * _time(step, iters)


def _rank(rank, cp, port, threads, cases, iters, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=cp)
    group = dist.group.WORLD if cp > 1 else None
    for case in cases:
        q, k, v, grad, segments = inputs(*case)
        local = [zigzag_split(t, rank, cp, dim=2).requires_grad_() for t in (q, k, v)]
        local_grad, local_seg = zigzag_split(grad, rank, cp, dim=2), zigzag_split(segments, rank, cp, dim=1)

        def step():
            out = ring_attention(*local, local_seg, group)
            torch.autograd.grad(out, local, local_grad)

        ms = torch.tensor(1e3 * _time(step, iters, sync=dist.barrier))
        dist.all_reduce(ms, op=dist.ReduceOp.MAX)
        if rank == 0:
            results.put((case, ms.item()))
    dist.destroy_process_group()


def ring_ms(cp, threads, cases, iters) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    mp.start_processes(_rank, args=(cp, port, threads, cases, iters, results), nprocs=cp, join=True,
                       start_method="spawn")
    return dict(results.get() for _ in cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", default="1024,2048,4096", help="sequence lengths (divisible by 2*cp)")
    parser.add_argument("--cp", default="1,2", help="context-parallel sizes")
    parser.add_argument("--docs", default="1,8", help="documents per sample (equal lengths)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--groups", type=int, default=2, help="K/V heads (GQA)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(s, d, args.heads, args.groups, args.head_dim)
             for s in map(int, args.seq.split(",")) for d in map(int, args.docs.split(","))]
    cps = [int(c) for c in args.cp.split(",")]
    ring = {cp: ring_ms(cp, args.threads, cases, args.iters) for cp in cps}
    print(f"fp32, b=1, H={args.heads}, G={args.groups}, d={args.head_dim}, {args.threads} thread(s) per "
          f"process, median of {args.iters}, forward+backward ms (ring: slowest rank)")
    header = f"| S | docs | SDPA full | " + " | ".join(f"ring c={cp}" for cp in cps) + " |"
    print(header)
    print("|" + "---|" * (3 + len(cps)))
    for case in cases:
        ref = sdpa_ms(*case, args.iters)
        cells = " | ".join(f"{ring[cp][case]:.1f} ({ref / ring[cp][case]:.2f}x)" for cp in cps)
        print(f"| {case[0]} | {case[1]} | {ref:.1f} | {cells} |")


if __name__ == "__main__":
    main()
