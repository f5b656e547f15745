"""Generate with our checkpoints or Hugging Face exports: text-to-image, text-to-video, image understanding.

    # text -> image (latent 8x8 = 64x64 pixels with the tiny VQ; the 8B model uses 64x64 -> 512px)
    python tools/generate.py --checkpoint runs/demo/stage1/checkpoints --vq-dir runs/demo/vq \\
        --prompt "a red circle" --height 8 --width 8 --out sample.png
    # text -> video (2 latent frames = 8 frames)
    python tools/generate.py --hf runs/demo/hf --prompt "a moving square" --height 8 --width 8 \\
        --frames 2 --fps 8 --out sample.mp4
    # image -> text
    python tools/generate.py --hf runs/demo/hf --image in.png --max-new-tokens 32 --top-k 1

Our checkpoints load in this process at TP=1 from any saved layout and decode with a KV cache
(--no-cache re-runs the whole sequence per token). Decoding of pictures is constrained to a valid
grid; top-k / top-p / temperature sampling (--top-k 1 is greedy) and classifier-free guidance (--cfg;
1.0 turns it off) with the conditional and unconditional prompts in one batch. --save-tokens writes
the whole sequence as JSON ({"ids", "prompt_length"}) for tools/make_preferences.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="our checkpoint dir (RUN/checkpoints or an iter_* dir)")
    source.add_argument("--hf", help="export written by tools/convert_to_hf.py (or a released Emu3 directory)")
    parser.add_argument("--vq-dir", help="Emu3 VQ directory (default: the one bundled in an --hf export)")
    parser.add_argument("--prompt", help="caption of the picture or video to generate")
    parser.add_argument("--image", type=Path, help="image to describe (image understanding; prints text)")
    parser.add_argument("--question", default="", help="text after the image in an understanding prompt")
    parser.add_argument("--height", type=int, default=64, help="latent rows (pixels / 8)")
    parser.add_argument("--width", type=int, default=64, help="latent columns (pixels / 8)")
    parser.add_argument("--frames", type=int, default=0, help="latent frames of a video (0: an image)")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--min-pixels", type=int, default=512 * 512, help="understanding: smallest image area")
    parser.add_argument("--max-pixels", type=int, default=1024 * 1024, help="understanding: largest image area")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="understanding: longest answer")
    parser.add_argument("--top-k", type=int, default=2048)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (1.0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="re-run the whole sequence every token")
    parser.add_argument("--out", type=Path, help=".png for an image, .mp4/.gif for a video")
    parser.add_argument("--save-tokens", type=Path, help="write the whole token sequence as JSON")
    args = parser.parse_args(argv)
    if (args.prompt is None) == (args.image is None):
        parser.error("give --prompt (generate a picture/video) or --image (describe it), not both")
    if args.prompt is not None and args.out is None:
        parser.error("--prompt needs --out (.png for an image, .mp4/.gif for a video)")
    return args


def run(args: argparse.Namespace) -> str:
    """Do what `args` ask; returns the line to print."""
    from megatron_emu3.data.documents import VisionMeta
    from megatron_emu3.data.tokens import SOT
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer
    from megatron_emu3.generation.api import (GenerationError, generate_vision, load_generator, understand,
                                              understanding_prompt)
    from megatron_emu3.generation.sampling import SamplingConfig

    sampling = SamplingConfig(args.top_k, args.top_p, args.temperature, args.cfg, args.seed)
    lm, vq = load_generator(checkpoint=args.checkpoint, hf=args.hf, vq_dir=args.vq_dir, use_cache=not args.no_cache)
    if vq is None:
        raise GenerationError("no VQ to encode/decode pixels: pass --vq-dir, or export with tools/convert_to_hf.py --vq-dir")
    tokenizer = Emu3TextTokenizer.from_default()
    if args.image is not None:
        from megatron_emu3.data.media import prepare_image

        pixels = prepare_image(args.image, args.min_pixels, args.max_pixels, factor=vq.layout.spatial_factor)
        codes = vq.encode_images(pixels[None])[0]
        text, new = understand(lm, tokenizer, codes, sampling, args.max_new_tokens, args.question, layout=vq.layout)
        prompt = understanding_prompt(codes, tokenizer, args.question, layout=vq.layout)
        _save_tokens(args.save_tokens, prompt + new, len(prompt))
        return text
    duration = args.frames * vq.temporal_factor / args.fps if args.frames else None
    meta = VisionMeta(args.height, args.width, args.frames or None, args.fps if args.frames else None, duration)
    codes, ids = generate_vision(lm, tokenizer, args.prompt, meta, sampling, layout=vq.layout)
    from megatron_emu3.preprocess.inspect import save_pixels

    save_pixels(vq.decode(codes), args.out, args.fps if args.frames else None)
    _save_tokens(args.save_tokens, ids, ids.index(SOT) + 1)  # the prompt ends with SOT
    return f"generated codes {tuple(codes.shape)} -> {args.out}"


def _save_tokens(path: Path | None, ids: list[int], prompt_length: int) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"ids": [int(i) for i in ids], "prompt_length": prompt_length}) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        print(run(args))
    except (ValueError, FileNotFoundError) as err:  # GenerationError, config and media errors
        print(f"generate: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
