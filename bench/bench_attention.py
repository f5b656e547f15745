"""Attention forward+backward TFLOP/s per backend at long sequence lengths, against the bare kernel.

    python bench/bench_attention.py [--seqs 8192,32768,131072] [--docs 1] [--heads 32 --kv-heads 8 --dim 128]
                                    [--json PATH]

For each available backend (torch SDPA module, torch varlen module, flash-attn varlen module, Transformer Engine
DotProductAttention) it times our module and the bare kernel it wraps on one GPU (bf16) or the CPU
(fp32; use small --seqs there). FLOPs: forward 4 * s^2 * heads * dim / 2 (causal counted as half),
backward 2.5x forward (flash-attention's convention); with D documents per sequence the causal
document-masked work is divided by D. Not a test. Transformer Engine is called as our TE path calls
it: THD packed documents (`cu_seqlens`) with the padding_causal mask, so it masks documents too.
--json PATH also writes every row there (bench/report.py reads it). A backend that fails at one length
(out of memory, say) is marked `failed` in its row and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import torch
import torch.nn.functional as F


def _time(fn, iters: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def write_json(path: str | None, figures: dict) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(figures, handle, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", default="8192,32768,131072")
    parser.add_argument("--docs", type=int, default=1, help="equal documents per sequence")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_emu3.batch.inputs import document_attention_mask

    from megatron_emu3.model.attention import SDPACoreAttention
    from megatron_emu3.model.flash_attention import (FlashVarlenCoreAttention, TorchVarlenCoreAttention, flash_available,
                                                     torch_varlen_available)
    from megatron_emu3.batch.inputs import document_cu_seqlens

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    cfg = TransformerConfig(num_layers=1, hidden_size=args.heads * args.dim, num_attention_heads=args.heads,
                            num_query_groups=args.kv_heads, attention_dropout=0.0, hidden_dropout=0.0,
                            bf16=cuda, params_dtype=dtype)
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device {device_name} | torch {torch.__version__} | {dtype} | "
          f"heads {args.heads}/{args.kv_heads} dim {args.dim} | docs per sequence {args.docs}")
    figures = {"device": device_name, "torch": torch.__version__, "dtype": str(dtype), "heads": args.heads,
               "kv_heads": args.kv_heads, "dim": args.dim, "docs": args.docs, "rows": []}
    write_json(args.json, figures)
    print("| seq | backend | module ms | module TFLOP/s | bare kernel ms | bare TFLOP/s |")
    print("|---|---|---|---|---|---|")
    failed = []
    for seq in (int(s) for s in args.seqs.split(",")):
        flops = 3.5 * 4 * seq * seq * args.heads * args.dim / 2 / args.docs
        q = torch.randn(seq, 1, args.heads, args.dim, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(seq, 1, args.kv_heads, args.dim, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(seq, 1, args.kv_heads, args.dim, device=device, dtype=dtype, requires_grad=True)
        seg = (torch.arange(seq, device=device) * args.docs // seq).int()[None]
        rows = []
        if args.docs == 1 or seq <= 16384:  # a boolean [s, s] mask beyond that does not fit
            sdpa = SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")
            mask = None if args.docs == 1 else document_attention_mask(seg)
            qb, kb, vb = (t.detach().permute(1, 2, 0, 3).requires_grad_() for t in (q, k, v))
            rows.append(("torch SDPA", lambda: sdpa(q, k, v, mask).sum().backward(),
                         lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=None if mask is None else ~mask,
                                                                is_causal=mask is None, enable_gqa=True).sum().backward()))
        cu, longest = document_cu_seqlens(seg)
        if torch_varlen_available()[0]:
            from torch.nn.attention.varlen import varlen_attn

            varlen = TorchVarlenCoreAttention(cfg, 1, AttnMaskType.causal, "self")
            qv, kv, vv = (t.detach()[:, 0].requires_grad_() for t in (q, k, v))
            rows.append(("torch varlen", lambda: varlen(q, k, v, seg).sum().backward(),
                         lambda: varlen_attn(qv, kv, vv, cu, cu, longest, longest, window_size=(-1, 0),
                                             enable_gqa=True).sum().backward()))
        if flash_available()[0]:
            from flash_attn import flash_attn_varlen_func

            flash = FlashVarlenCoreAttention(cfg, 1, AttnMaskType.causal, "self")
            qf, kf, vf = (t.detach()[:, 0].requires_grad_() for t in (q, k, v))
            rows.append(("flash-attn varlen", lambda: flash(q, k, v, seg).sum().backward(),
                         lambda: flash_attn_varlen_func(qf, kf, vf, cu, cu, longest, longest, causal=True).sum().backward()))
        if cuda and importlib.util.find_spec("transformer_engine") is not None:
            from transformer_engine.pytorch import DotProductAttention

            # The packed (THD) call our TE path makes: documents as cu_seqlens, padding_causal mask.
            te = DotProductAttention(args.heads, args.dim, num_gqa_groups=args.kv_heads,
                                     attn_mask_type="padding_causal", qkv_format="thd")
            cu32 = cu.to(device=device, dtype=torch.int32)
            qt, kt, vt = (t.detach()[:, 0].requires_grad_() for t in (q, k, v))
            rows.append(("Transformer Engine (THD)",
                         lambda: te(qt, kt, vt, cu_seqlens_q=cu32, cu_seqlens_kv=cu32, max_seqlen_q=longest,
                                    max_seqlen_kv=longest).sum().backward(), None))
        for name, module_fn, bare_fn in rows:
            try:
                module_s = _time(module_fn, args.iters)
                bare_s = _time(bare_fn, args.iters) if bare_fn else None
            except Exception as err:  # noqa: BLE001 - one kernel's failure (OOM, a signature it lacks) costs only its row
                failed.append(f"{seq:,} {name}: {type(err).__name__}: {str(err).splitlines()[0]}")
                print(f"| {seq:,} | {name} | failed | - | - | - |")
                print(f"{seq:,} {name} failed: {err}", file=sys.stderr)
                figures["rows"].append({"seq": seq, "backend": name, "error": failed[-1]})
                write_json(args.json, figures)
                if cuda:
                    torch.cuda.empty_cache()
                continue
            bare = f"{bare_s * 1e3:.1f} | {flops / bare_s / 1e12:.2f}" if bare_s else "- | -"
            print(f"| {seq:,} | {name} | {module_s * 1e3:.1f} | {flops / module_s / 1e12:.2f} | {bare} |")
            figures["rows"].append({"seq": seq, "backend": name, "module_ms": module_s * 1e3,
                                    "module_tflops": flops / module_s / 1e12,
                                    "bare_ms": bare_s * 1e3 if bare_s else None,
                                    "bare_tflops": flops / bare_s / 1e12 if bare_s else None})
            write_json(args.json, figures)  # after every row: a run stopped at its time limit keeps what it measured
        del q, k, v, rows
    if failed:
        sys.exit(f"{len(failed)} row(s) failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
