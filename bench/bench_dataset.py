"""Data-side benchmark: loader samples/s vs megatron-core's GPTDataset, index build rate, pad fractions.

    PYTHONPATH=. python bench/bench_dataset.py [--workdir /tmp/emu3_bench] [--read 2000]

1. Shards with a stage-1 mix (text with log-normal lengths, 512^2 image generation/understanding
   documents of ~4,180 tokens) written with IndexedDatasetBuilder; our PackedDataset and megatron-core's
   GPTDataset (same shards, same seq_len 5,120, reset position ids / attention mask, no attention mask
   tensor) each read the same number of samples in a random order, one process. GPTDataset cuts one
   token stream into windows (no whole-document packing, no per-kind weights), so it is the speed
   reference, not a feature equivalent.
2. Index (packing plan) build time per million documents (in memory, from document lengths).
3. Pad fraction of the plan at 5,120 (stage-1 mixes) and 131,072 (videos of 20k-130k tokens).
Results are printed as a Markdown table (copied into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_emu3.data.blend import BlendSpec, DataSourceSpec  # noqa: E402
from megatron_emu3.data.dataset import build_datasets, build_plan  # noqa: E402
from megatron_emu3.data.tokens import VOCAB_SIZE, DocKind  # noqa: E402
from tests.data.shard_factory import generation_doc, text_doc, understanding_doc  # noqa: E402


def text_lengths(rng, n):
    """Web-text-like lengths: log-normal, median ~550 tokens, long tail (capped at 200k)."""
    return np.minimum(rng.lognormal(6.3, 1.0, n).astype(np.int64) + 2, 200_000)


def write_stage1_shards(workdir, n_text, n_gen, n_und, seed=0):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    prefixes = {}
    for name, n, kind in (("text", n_text, DocKind.TEXT), ("image_gen", n_gen, DocKind.IMAGE_GENERATION),
                          ("image_und", n_und, DocKind.IMAGE_UNDERSTANDING)):
        prefix = os.path.join(workdir, name)
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32, multimodal=True)
        lengths = text_lengths(rng, n)
        for i in range(n):
            if kind == DocKind.TEXT:
                doc = text_doc(rng, int(lengths[i]) - 2)
            elif kind == DocKind.IMAGE_GENERATION:
                doc = generation_doc(rng, int(rng.integers(5, 25)), 64, 64)
            else:
                doc = understanding_doc(rng, int(rng.integers(10, 60)), 64, 64)
            builder.add_item(torch.from_numpy(doc), int(kind))
            builder.end_document()
        builder.finalize(prefix + ".idx")
        prefixes[name] = prefix
    return prefixes


class _Tokenizer:
    """The little megatron-core's GPTDataset asks of a tokenizer."""

    vocab_size = VOCAB_SIZE
    eod = 151850  # EOS
    pad = 151643

    @property
    def unique_identifiers(self):
        return {"class": "emu3-bench"}


def gpt_dataset(prefixes, weights, seq_len, num_samples, cache):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=1, sequence_length=seq_len, blend=(list(prefixes), list(weights)), split="100,0,0",
        path_to_cache=cache, tokenizer=_Tokenizer(), reset_position_ids=True, reset_attention_mask=True,
        eod_mask_loss=False, create_attention_mask=False,
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, config).build()[0]


def read_rates(datasets, count, rounds=8, seed=0):
    """Samples/s of each dataset, reading in alternating rounds (the median over rounds), so a change
    in machine load hits both loaders alike."""
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(ds))[:count] for ds in datasets]
    for ds, order in zip(datasets, orders):
        ds[int(order[0])]  # first touch outside the timing
    rates = [[] for _ in datasets]
    for chunk in range(rounds):
        for k, (ds, order) in enumerate(zip(datasets, orders)):
            part = np.array_split(order, rounds)[chunk]
            start = time.perf_counter()
            for i in part:
                ds[int(i)]
            rates[k].append(len(part) / (time.perf_counter() - start))
    return [float(np.median(r)) for r in rates]


def loader_vs_gpt(workdir, read):
    seq_len = 5120
    t = time.perf_counter()
    prefixes = write_stage1_shards(workdir, n_text=6000, n_gen=2500, n_und=800)
    print(f"wrote shards in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    weights = [0.3, 0.5, 0.2]
    spec = BlendSpec(sources=tuple(DataSourceSpec((prefixes[k],), w, k) for k, w in zip(prefixes, weights)),
                     split=(1.0, 0.0), cache_dir=os.path.join(workdir, "ours_cache"))
    t = time.perf_counter()
    ours, _ = build_datasets(spec, seq_len, seed=1, train_samples=read)
    ours_build = time.perf_counter() - t
    t = time.perf_counter()
    theirs = gpt_dataset(prefixes.values(), weights, seq_len, read, os.path.join(workdir, "gpt_cache"))
    theirs_build = time.perf_counter() - t
    n = min(read, len(ours), len(theirs))
    r_ours, r_theirs = read_rates([ours, theirs], n)
    return {"samples": n, "ours": r_ours, "gpt": r_theirs, "ours_build": ours_build, "gpt_build": theirs_build,
            "ours_pad": ours.info["pad_fraction"]}


def stage1_lengths(rng, n, p_image=0.4):
    kinds = np.where(rng.random(n) < p_image, rng.choice([1, 2], n, p=[0.7, 0.3]), 0)
    lengths = np.where(kinds == 0, text_lengths(rng, n), rng.integers(4170, 4191, n))
    return lengths, kinds


def stage2_lengths(rng, n, mix):
    """mix: (p_video, p_image, p_text) per document."""
    kinds = rng.choice([3, 1, 0], n, p=mix)
    lengths = np.select([kinds == 3, kinds == 1], [rng.integers(20_000, 130_001, n), rng.integers(4170, 4191, n)],
                        text_lengths(rng, n))
    return lengths, kinds


def plan_stats(lengths, kinds, weights_by_kind, seq_len, window=10_000, text_fill=False):
    groups = [np.flatnonzero(kinds == k) for k in weights_by_kind]
    weights = np.array([weights_by_kind[k] for k in weights_by_kind], dtype=float)
    keep = [(g, w) for g, w in zip(groups, weights) if len(g)]
    t = time.perf_counter()
    _, info = build_plan([g for g, _ in keep], lengths, kinds == 0, np.array([w for _, w in keep]) /
                         sum(w for _, w in keep), seq_len, 0, None, window, text_fill=text_fill)
    return time.perf_counter() - t, info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/emu3_bench")
    parser.add_argument("--read", type=int, default=2000, help="samples each loader reads")
    parser.add_argument("--docs", type=int, default=1_000_000, help="documents for the build-rate runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    # megatron-core's BlendedDataset calls torch.distributed.get_rank() when it caches: one gloo rank
    torch.distributed.init_process_group("gloo", init_method=f"file://{args.workdir}/pg", rank=0, world_size=1)
    rng = np.random.default_rng(0)
    rows = []

    r = loader_vs_gpt(args.workdir, args.read)
    rows.append(("loader, 5,120, stage-1 shards (9,300 docs), samples/s (1 process, median of 8 alternating rounds)",
                 f"ours {r['ours']:.0f}, GPTDataset {r['gpt']:.0f}, ratio {r['ours'] / r['gpt']:.2f}"))
    rows.append(("index build on those shards (s)", f"ours {r['ours_build']:.2f}, GPTDataset {r['gpt_build']:.2f}"))

    lengths, kinds = stage1_lengths(rng, args.docs)
    secs, info = plan_stats(lengths, kinds, {0: 0.3, 1: 0.5, 2: 0.2}, 5120)
    rows.append((f"plan build, 5,120, stage-1 blend of {args.docs:,} docs ({info['documents_packed']:,} packed): "
                 "s per million packed docs", f"{secs / info['documents_packed'] * 1e6:.2f}"))
    rows.append(("pad fraction 5,120: blend text 0.3 / image-gen 0.5 / image-und 0.2 (token shares)",
                 f"{info['pad_fraction']:.4f}"))
    secs, info = plan_stats(lengths, kinds, {0: 0.3, 1: 0.5, 2: 0.2}, 5120, text_fill=True)
    rows.append(("same blend with text_fill: pad fraction / extra pieces per packed doc / s per million docs",
                 f"{info['pad_fraction']:.5f} / {info['extra_pieces'] / info['documents_packed']:.3f} / "
                 f"{secs / info['documents_packed'] * 1e6:.2f}"))
    secs, info = plan_stats(lengths, kinds, {0: 0.6, 1: 0.3, 2: 0.1}, 5120)
    rows.append(("pad fraction 5,120: text 0.6 / image-gen 0.3 / image-und 0.1", f"{info['pad_fraction']:.4f}"))
    lengths, kinds = stage1_lengths(rng, args.docs, p_image=1.0)
    secs, info = plan_stats(lengths, kinds, {1: 0.7, 2: 0.3}, 5120)
    rows.append(("pad fraction 5,120: images only (no text to fill)", f"{info['pad_fraction']:.4f}"))

    n2 = max(args.docs // 10, 10_000)
    for mix, weights, label in (((1.0, 0.0, 0.0), {3: 1.0}, "videos only"),
                                ((0.2, 0.4, 0.4), {3: 0.6, 1: 0.25, 0: 0.15}, "video 0.6 / image 0.25 / text 0.15"),
                                ((0.2, 0.4, 0.4), {3: 0.4, 1: 0.3, 0: 0.3}, "video 0.4 / image 0.3 / text 0.3")):
        lengths, kinds = stage2_lengths(rng, n2, mix)
        secs, info = plan_stats(lengths, kinds, weights, 131_072)
        rows.append((f"pad fraction 131,072: {label} ({info['documents_packed']:,} docs packed)",
                     f"{info['pad_fraction']:.4f}"))
        if len(weights) > 1:
            _, filled = plan_stats(lengths, kinds, weights, 131_072, text_fill=True)
            rows.append(("  same with text_fill", f"{filled['pad_fraction']:.5f}"))
    rows.append((f"plan build, 131,072, last mix ({info['documents_packed']:,} packed): s per million packed docs",
                 f"{secs / info['documents_packed'] * 1e6:.2f}"))

    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
