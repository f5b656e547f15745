"""Plan the parallel layout of a recipe: per-GPU memory by part, model FLOPs per token, a suggestion.

    python tools/plan_parallel.py --config examples/recipes/emu3_8b_stage2.yaml [--gpus 128] [--gpu-memory-gib 80]

Conventions (memory model, FLOP counting) are in megatron_emu3/parallel/planner.py and printed below.
"""

from __future__ import annotations

import argparse
import sys

from megatron_emu3.config.loading import ConfigError, resolve_config
from megatron_emu3.parallel.planner import (GIB, Layout, memory_per_gpu, micro_batches_per_step, model_flops_per_token,
                                            pipeline_bubble, suggest)


def _fmt(mem: dict) -> str:
    parts = " ".join(f"{k} {mem[k] / GIB:6.1f}" for k in ("weights", "grads", "optimizer", "activations", "logits", "total"))
    if len(mem["stages"]) > 1:
        parts += " | stages " + " ".join(f"{t / GIB:.1f}" for t in mem["stages"])
    return parts


def _describe(cfg, layout: Layout) -> str:
    text = f"tp {layout.tp} cp {layout.cp} pp {layout.pp}"
    if layout.vpp:
        text += f" vpp {layout.vpp}"
    text += f" dp {layout.dp} recompute {layout.recompute}"
    if layout.pp > 1:
        bubble = pipeline_bubble(layout.pp, layout.vpp, micro_batches_per_step(cfg, layout))
        text += f" (pipeline bubble {bubble:.1%})"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--gpus", type=int, help="total GPUs (default: launch.nodes x launch.gpus_per_node)")
    parser.add_argument("--gpu-memory-gib", type=float, help="default: launch.gpu_memory_gib")
    parser.add_argument("--all", action="store_true", help="print every candidate layout")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    gpus = args.gpus or cfg.launch.nodes * cfg.launch.gpus_per_node
    gpu_mem = args.gpu_memory_gib or cfg.launch.gpu_memory_gib
    flops = model_flops_per_token(cfg)
    print(f"recipe {args.config}: seq {cfg.data.seq_length:,}, micro batch {cfg.data.micro_batch_size}, "
          f"global batch {cfg.data.global_batch_size}, {gpus} GPUs x {gpu_mem:g} GiB")
    print(f"model FLOPs per token: {flops / 1e9:.1f} GFLOP (6 x matmul params + attention, causal counted as half)")
    p = cfg.parallel
    current = Layout(p.tp, p.cp, gpus // (p.tp * p.cp * p.pp), p.recompute, p.distributed_optimizer, p.sequence_parallel,
                     p.pp, p.vpp)
    print(f"recipe layout {_describe(cfg, current)}: GiB per GPU {_fmt(memory_per_gpu(cfg, current))}")
    best, rows = suggest(cfg, gpus, cfg.launch.gpus_per_node, gpu_mem)
    if args.all:
        for layout, mem in sorted(rows, key=lambda r: r[1]["total"]):
            print(f"  {_describe(cfg, layout)}: {_fmt(mem)}")
    if best is None:
        print(f"no layout fits {gpu_mem:g} GiB: add GPUs, lower the micro batch or the sequence length")
        return 1
    pipeline = f" parallel.pp={best.pp}" + (f" parallel.vpp={best.vpp}" if best.vpp else "")
    print(f"suggested: parallel.tp={best.tp} parallel.cp={best.cp}{pipeline} (dp {best.dp}) "
          f"parallel.recompute={best.recompute} parallel.sequence_parallel={str(best.sequence_parallel).lower()} "
          f"parallel.distributed_optimizer=true")
    if best.pp > 1:
        print(f"  {_describe(cfg, best)}")
    print(f"  GiB per GPU {_fmt(memory_per_gpu(cfg, best))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
