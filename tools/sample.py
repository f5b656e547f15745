"""Sample a picture (or a video) from a Hugging Face export with the VQ bundled.

    python tools/sample.py --hf runs/demo/hf --prompt "a red circle on the left of a white background" \\
        --height 8 --width 8 --out sample.png [--frames 2 --fps 8 --out sample.mp4]

--height/--width are in latent units (pixels / 8). Decoding is constrained to a valid grid (EOL after
every row, EOF after every frame, then EOV), with top-k / top-p / temperature and classifier-free
guidance (--cfg; 1.0 turns it off).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="export written by tools/convert_to_hf.py --vq-dir")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--height", type=int, default=64, help="latent rows (pixels / 8)")
    parser.add_argument("--width", type=int, default=64, help="latent columns (pixels / 8)")
    parser.add_argument("--frames", type=int, default=0, help="latent frames for a video (0: an image)")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--top-k", type=int, default=2048)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help=".png for an image, .mp4/.gif for a video")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)

    from megatron_emu3.convert.export import load_hf_model
    from megatron_emu3.data.documents import VisionMeta
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer
    from megatron_emu3.data.vision_tokenizer import Emu3VisionTokenizer
    from megatron_emu3.generation.sampling import SamplingConfig, sample_vision

    model, _ = load_hf_model(args.hf)
    if not hasattr(model, "model") or not hasattr(model.model, "vqmodel"):
        print(f"sample: {args.hf} has no VQ; export it with tools/convert_to_hf.py --vq-dir", file=sys.stderr)
        return 2
    vq = Emu3VisionTokenizer(model.model.vqmodel)
    duration = args.frames * vq.temporal_factor / args.fps if args.frames else None
    meta = VisionMeta(height=args.height, width=args.width, frames=args.frames or None,
                      fps=args.fps if args.frames else None, seconds=duration)
    cfg = SamplingConfig(args.top_k, args.top_p, args.temperature, args.cfg, args.seed)
    try:
        codes = sample_vision(model, Emu3TextTokenizer.from_default(), args.prompt, meta, cfg, vq.codebook_size)
    except ValueError as err:
        print(f"sample: {err}", file=sys.stderr)
        return 2
    from megatron_emu3.preprocess.inspect import save_pixels

    save_pixels(vq.decode(codes), args.out, args.fps if args.frames else None)
    print(f"sampled codes {tuple(codes.shape)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
