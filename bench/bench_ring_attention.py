"""Forward+backward time of ring attention vs full attention (torch SDPA) on the whole sequence.

CPU (default): for each sequence length S, document count and CP size c, spawns c ranks (one thread each), runs
`ring_attention` on each rank's zigzag slice and reports the slowest rank's median time per
forward+backward; the reference is torch SDPA with the causal + same-document boolean mask on the
whole sequence in one process with the same thread count. Numbers are wall-clock on this machine;
c ranks use c cores, so with c <= cores the ideal ring time is SDPA / c (plus communication).

--device cuda: one GPU, bf16, CP size 1 only (no ranks: the ring's own block plan, tiling and
online softmax against torch's kernels), reference SDPA with `is_causal` for one document (the
flash kernel training uses) and with the causal + same-document mask for several (K/V repeated to
every query head first: SDPA's GQA with a mask would fall back to the math kernel).

    .venv/bin/python bench/bench_ring_attention.py --seq 1024,2048,4096 --cp 1,2 --docs 1,8
    python bench/bench_ring_attention.py --device cuda --seq 32768 --cp 1 --docs 1,8 --heads 32 --groups 8 \
        --head-dim 128 [--json PATH]

--json PATH also writes every figure there (bench/report.py reads it).
"""

from __future__ import annotations

import argparse
import json
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


def inputs(seq_len: int, docs: int, heads: int, groups: int, head_dim: int, batch: int = 1, device="cpu",
           dtype=torch.float32):
    """Random q, k, v, grad_out (drawn in fp32 on the CPU, then moved) and segment ids for `docs` equal documents."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, seq_len, head_dim, generator=g)
    k = torch.randn(batch, groups, seq_len, head_dim, generator=g)
    v = torch.randn(batch, groups, seq_len, head_dim, generator=g)
    grad = torch.randn(batch, heads, seq_len, head_dim, generator=g)
    segments = (torch.arange(seq_len) * docs // seq_len).expand(batch, seq_len).contiguous()
    return (*(t.to(device=device, dtype=dtype) for t in (q, k, v, grad)), segments.to(device))


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


def single_device_ms(case, iters: int, device: str, dtype: torch.dtype) -> tuple[float, float]:
    """(ring ms, SDPA ms) per forward+backward on one device, ring attention without a CP group."""
    seq_len, docs = case[0], case[1]
    q, k, v, grad, segments = inputs(*case, device=device, dtype=dtype)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    allowed = None if docs == 1 else ~document_attention_mask(segments)
    # With a mask, SDPA's GQA falls back to the math kernel ([heads, s, s] scores: 64 GiB at 32k), so
    # the masked reference gets K/V repeated to every query head beforehand (the same FLOPs).
    ks, vs = (k, v) if allowed is None else (t.detach().repeat_interleave(q.shape[1] // k.shape[1], 1).requires_grad_()
                                             for t in (k, v))

    def ring_step():
        torch.autograd.grad(ring_attention(q, k, v, segments, None), (q, k, v), grad)

    def sdpa_step():
        out = F.scaled_dot_product_attention(q, ks, vs, attn_mask=allowed, is_causal=allowed is None,
                                             enable_gqa=allowed is None)
        torch.autograd.grad(out, (q, ks, vs), grad)

    return 1e3 * _time(ring_step, iters, sync), 1e3 * _time(sdpa_step, iters, sync)


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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: one GPU, bf16, --cp 1 only, no ranks")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(s, d, args.heads, args.groups, args.head_dim)
             for s in map(int, args.seq.split(",")) for d in map(int, args.docs.split(","))]
    cps = [int(c) for c in args.cp.split(",")]
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available")
        if cps != [1]:
            parser.error(f"--device cuda runs one GPU without ranks: --cp must be 1, not {args.cp}")
        device_name, dtype, threads = torch.cuda.get_device_name(), torch.bfloat16, "GPU"
        measured = {case: single_device_ms(case, args.iters, "cuda", dtype) for case in cases}
        ring = {1: {case: ms[0] for case, ms in measured.items()}}
        reference = {case: ms[1] for case, ms in measured.items()}
        sdpa = "SDPA is_causal for 1 doc, causal + document mask for more"
    else:
        device_name, dtype, threads = "CPU", torch.float32, f"{args.threads} thread(s) per process"
        ring = {cp: ring_ms(cp, args.threads, cases, args.iters) for cp in cps}
        reference = {case: sdpa_ms(*case, args.iters) for case in cases}
        sdpa = "SDPA with the causal + document mask"
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    print(f"{device_name} {precision}, b=1, H={args.heads}, G={args.groups}, d={args.head_dim}, {threads}, "
          f"median of {args.iters}, forward+backward ms (ring: slowest rank; full: {sdpa})")
    header = f"| S | docs | SDPA full | " + " | ".join(f"ring c={cp}" for cp in cps) + " |"
    print(header)
    print("|" + "---|" * (3 + len(cps)))
    rows = []
    for case in cases:
        ref = reference[case]
        cells = " | ".join(f"{ring[cp][case]:.1f} ({ref / ring[cp][case]:.2f}x)" for cp in cps)
        print(f"| {case[0]} | {case[1]} | {ref:.1f} | {cells} |")
        rows.append({"seq": case[0], "docs": case[1], "sdpa_ms": ref,
                     "ring_ms": {str(cp): ring[cp][case] for cp in cps}})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device_name, "precision": precision, "heads": args.heads, "groups": args.groups,
                       "head_dim": args.head_dim, "iters": args.iters, "reference": sdpa, "rows": rows}, handle,
                      indent=1)


if __name__ == "__main__":
    main()
