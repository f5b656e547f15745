"""Preprocessing throughput: text documents (ours vs a plain tiktoken + IndexedDatasetBuilder loop)
and the vision tokenizer (2-D image path vs transformers' 4-frame path; tiny VQ on CPU; on a GPU the
real-size Emu3 VQ architecture with random weights at 512^2 and for a 4-frame video).

    OMP_NUM_THREADS=2 python bench/bench_preprocess.py [--docs 4000] [--images 64] [--skip-gpu]

Not a test: prints a Markdown table of the figures (docs/benchmarks.md holds a run).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer  # noqa: E402

WORDS = ("the a red green blue circle square triangle moves slowly across background picture of with and "
         "under over near 多模态 模型 une forme rouge bewegt sich 2024 3.14 — it's").split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 400))) + "." for _ in range(n)]


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_text(texts: list[str], tok: Emu3TextTokenizer, out: Path) -> list[tuple[str, str]]:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_emu3.data import tokens
    from megatron_emu3.data.tokens import DocKind
    from megatron_emu3.preprocess.cli import main as tool_main
    from megatron_emu3.preprocess.shards import ShardWriter
    from megatron_emu3.preprocess.worker import Settings, Worker

    enc = tok._encoding
    n_tokens = sum(len(enc.encode_ordinary(t)) + 2 for t in texts)

    def plain():
        builder = IndexedDatasetBuilder(str(out / "plain.bin"), dtype=np.int32, multimodal=True)
        for t in texts:
            builder.add_item(torch.tensor([tokens.BOS, *enc.encode_ordinary(t), tokens.EOS]), mode=0)
            builder.end_document()
        builder.finalize(str(out / "plain.idx"))

    worker = Worker(Settings(output_prefix=str(out / "lib"), vq_dir=None))
    from megatron_emu3.preprocess.manifest import Row

    rows = [Row("bench", i + 1, t) for i, t in enumerate(texts)]

    def ours():
        writer = ShardWriter(out / "lib_00000", "bench", len(rows))
        for row in rows:
            prepared = worker.prepare(row, None)
            writer.add(prepared.doc, DocKind.TEXT)
        writer.commit()

    manifest = out / "m.jsonl"
    manifest.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    def tool():
        for p in out.glob("tool*"):
            p.unlink()
        rc = tool_main(["--input", str(manifest), "--output-prefix", str(out / "tool"), "--workers", "1",
                        "--no-progress", "--shard-size", str(len(texts)), "--keep-duplicates"])
        assert rc == 0

    t_plain, t_ours, t_tool = timed(plain), timed(ours), timed(tool, repeat=2)
    n = len(texts)
    lines = [("plain loop: tiktoken encode_ordinary + IndexedDatasetBuilder",
              f"{n / t_plain:,.0f} docs/s, {n_tokens / t_plain:,.0f} tokens/s"),
             ("ours, library path: Worker.prepare (validate, tokenize, format) + ShardWriter",
              f"{n / t_ours:,.0f} docs/s, {n_tokens / t_ours:,.0f} tokens/s (x{t_plain / t_ours:.2f} of plain)"),
             ("ours, whole tool: JSONL manifest -> shard + record + report, 1 worker",
              f"{n / t_tool:,.0f} docs/s, {n_tokens / t_tool:,.0f} tokens/s (x{t_plain / t_tool:.2f} of plain)")]
    return lines


def bench_vq(vt, batch: int, size: int, repeat: int = 3, video: bool = True) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    sync = torch.cuda.synchronize if vt.device.type == "cuda" else (lambda: None)

    def run(fn, arg):
        def go():
            fn(arg)
            sync()
        go()
        return timed(go, repeat)

    t2d, t4 = run(vt.encode_images, x), run(vt.encode_images_as_clips, x)
    dev = f"{vt.device.type} {str(vt.dtype).replace('torch.', '')}"
    lines = [(f"VQ {size}x{size} images, 2-D path, batch {batch}, {dev}", f"{batch / t2d:,.2f} images/s"),
             (f"VQ {size}x{size} images, 4-frame path, batch {batch}, {dev}",
              f"{batch / t4:,.2f} images/s (2-D path x{t4 / t2d:.2f} faster)")]
    if video:
        clip = np.repeat(x[:1, None], 4, axis=1)
        tv = run(vt.encode_videos, clip)
        lines.append((f"VQ 4-frame {size}x{size} video, {dev}", f"{1 / tv:,.2f} clips/s"))
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=4000)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--skip-gpu", action="store_true")
    args = p.parse_args()
    from megatron_emu3.data.vision_tokenizer import Emu3VisionTokenizer, save_tiny_vq

    results = []
    tok = Emu3TextTokenizer.from_default()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results += bench_text(corpus(args.docs), tok, tmp)
        vt = Emu3VisionTokenizer.from_dir(save_tiny_vq(tmp / "vq"))
        results += bench_vq(vt, args.images, 64)
    if torch.cuda.is_available() and not args.skip_gpu:
        from transformers import Emu3VQVAE, Emu3VQVAEConfig

        model = Emu3VQVAE(Emu3VQVAEConfig()).to("cuda", torch.bfloat16).eval()  # real size, random weights
        results += bench_vq(Emu3VisionTokenizer(model), 8, 512)
    print(f"torch threads {torch.get_num_threads()}, {args.docs} text docs, tiny VQ ~4.2M params")
    print("| what | figure |\n|---|---|")
    for what, figure in results:
        print(f"| {what} | {figure} |")


if __name__ == "__main__":
    main()
