"""Generation speed of our model: tokens/s with the KV cache vs re-running the full sequence per token.

    python bench/bench_generation.py [--config RECIPE] [--prompt 32] [--new 128] [--batch 1] [--device cpu|cuda]
        [--dtype fp32|bf16]
                                     [--overrides key=value ...]

Builds a random model of the recipe's architecture (default: the tiny recipe, full Emu3 vocabulary)
in one process at TP=1, decodes greedily with each session of `megatron_emu3.generation.decoding`,
checks both produce the same tokens, and prints tokens/s (new tokens x batch / wall time, prefill
included). Not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
import warnings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="examples/recipes/tiny.yaml")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="tokens to generate")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--overrides", nargs="*", default=[], help="config key=value overrides")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="weights and activations; default: bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to run; default: cuda when available. A device that is not the one this "
                             "process would use is an error (figures never come from the wrong device)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda, but CUDA is not available to this torch")
    if args.device == "cpu" and cuda:
        parser.error("--device cpu on a CUDA machine: hide the GPUs instead (CUDA_VISIBLE_DEVICES=)")

    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.generation.api import decode
    from megatron_emu3.generation.decoding import MegatronLM
    from megatron_emu3.generation.sampling import SamplingConfig
    from megatron_emu3.model.build import build_model
    from megatron_emu3.parallel.env import DistEnv
    from megatron_emu3.parallel.setup import init_distributed

    total = args.prompt + args.new
    cfg = resolve_config(args.config, ["parallel.tp=1", "parallel.cp=1", "parallel.sequence_parallel=false",
                                       "train.precision=fp32", f"data.seq_length={total}", *args.overrides])
    init_distributed(cfg, DistEnv(0, 1, 0))
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    gpt = build_model(cfg).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    if cuda:
        gpt = gpt.cuda()
    device = next(gpt.parameters()).device
    prompts = torch.randint(0, 151_643, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0)).tolist()
    greedy = SamplingConfig(top_k=1, guidance_scale=1.0)
    results = {}
    for name, cache in (("kv_cache", True), ("no_cache", False)):
        lm = MegatronLM(gpt, cfg.model.vocab_size, total, use_cache=cache)
        decode(lm, prompts, 4, greedy, device=device)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = decode(lm, prompts, args.new, greedy, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        results[name] = (out, args.new * args.batch / elapsed, elapsed)
    same = results["kv_cache"][0] == results["no_cache"][0]
    print(f"model {cfg.model.num_layers} layers x hidden {cfg.model.hidden_size}, vocab {cfg.model.vocab_size}; "
          f"device {device} {dtype}; batch {args.batch}, prompt {args.prompt}, new {args.new}; threads {torch.get_num_threads()}")
    for name, (_, rate, elapsed) in results.items():
        print(f"{name:9s} {rate:9.1f} tokens/s  ({elapsed:.2f} s)")
    print(f"speed-up {results['kv_cache'][1] / results['no_cache'][1]:.2f}x; same tokens: {same}")


if __name__ == "__main__":
    main()
