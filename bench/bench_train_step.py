"""Step time, tokens/s, model TFLOP/s and MFU of the Emu3-8B layer shape (reduced depth), one rank.

    python bench/bench_train_step.py [--layers 4] [--seq 5120] [--steps 5] [--json PATH] [overrides ...]

Hidden 4096, 32/8 heads, FFN 14336, the full 184,622 vocabulary, bf16 on GPU (fp32 on CPU, where it
only checks that the path runs: use small --layers/--seq there). MFU is model FLOPs (causal attention
counted as half, `parallel/planner.py`) over the measured bf16 matmul peak of this GPU (a large
square matmul timed here), and peak memory is compared with the planner's estimate. --json PATH
also writes every figure there (one object; bench/report.py reads it). Not a test.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch


def matmul_peak_tflops(dtype: torch.dtype, n: int = 8192, iters: int = 20) -> float:
    """Measured dense matmul throughput (TFLOP/s) of this device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = n if device == "cuda" else 1024
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=5120)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()  # options may follow the overrides
    warnings.filterwarnings("ignore")
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.config.to_mcore import fused_kernels_on
    from megatron_emu3.parallel.planner import Layout, memory_per_gpu, model_flops_per_token
    from megatron_emu3.training.pretrain import PretrainTask
    from megatron_emu3.training.trainer import build_run, train_one_step

    cuda = torch.cuda.is_available()
    cfg = resolve_config(None, ["preset=emu3_8b", f"model.num_layers={args.layers}", f"data.seq_length={args.seq}",
                                "data.micro_batch_size=1", "data.global_batch_size=1", "data.synthetic_vocab=32000",
                                f"train.iters={args.steps + 1}", "optimizer.warmup_iters=1",
                                f"train.precision={'bf16' if cuda else 'fp32'}", "model.hidden_dropout=0",
                                "model.attention_dropout=0", *args.overrides])
    run = build_run(cfg)
    task = PretrainTask(cfg, run.ctx, run.choice.input_format)
    start = time.perf_counter()
    train_one_step(run, task)  # warm-up, untimed: includes compiling the fused kernels when they are on
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_one_step(run, task)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = min(times)
    tokens = cfg.data.global_batch_size * cfg.data.seq_length
    flops = model_flops_per_token(cfg) * tokens / step / 1e12
    peak = matmul_peak_tflops(torch.bfloat16 if cuda else torch.float32)
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    precision = "bf16" if cuda else "fp32"
    print(f"device {device_name} | torch {torch.__version__} | layers {cfg.model.num_layers} | "
          f"seq {cfg.data.seq_length} | {precision} | recompute {cfg.parallel.recompute}")
    # which kernel produced these figures (the choice build_run made, model/spec.py)
    why, input_format = run.choice.why, run.choice.input_format
    print(f"attention backend={cfg.parallel.attention_backend}: {why} | input format {input_format}")
    fused = fused_kernels_on(cfg)
    print(f"warm-up step {warmup:.1f} s (fused kernels {'on: includes their compile' if fused else 'off'})")
    print(f"step {step * 1e3:.1f} ms | {tokens / step:,.0f} tokens/s | model TFLOP/s {flops:.1f} | "
          f"matmul peak {peak:.1f} TFLOP/s | MFU {flops / peak:.1%} (causal attention counted as half)")
    figures = {"device": device_name, "torch": torch.__version__, "layers": cfg.model.num_layers,
               "seq": cfg.data.seq_length, "precision": precision, "recompute": cfg.parallel.recompute,
               "attention_backend": cfg.parallel.attention_backend, "attention_kernel": why,
               "input_format": input_format, "fused_kernels": fused, "warmup_s": warmup, "step_ms": step * 1e3, "step_ms_all": [t * 1e3 for t in times],
               "tokens_per_s": tokens / step, "model_tflops": flops, "matmul_peak_tflops": peak, "mfu": flops / peak,
               "peak_memory_gib": None, "planner_memory_gib": None}
    if cuda:
        estimate = memory_per_gpu(cfg, Layout(1, 1, 1, cfg.parallel.recompute, False, False))["total"]
        figures.update(peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30, planner_memory_gib=estimate / 2**30)
        print(f"peak memory {figures['peak_memory_gib']:.1f} GiB | planner estimate "
              f"{figures['planner_memory_gib']:.1f} GiB")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)


if __name__ == "__main__":
    main()
