"""Reconstruction quality of any Emu3VQVAE directory (ours or a released one), like Table 2 of the
Emu3 paper: LPIPS, PSNR, SSIM and codebook usage on the images and 4-frame clips of a manifest, at
several resolutions.

    python tools/eval_vq.py --vq-dir runs/tiny_vq/vq --input data/val.jsonl --resolutions 64 128 \
        [--lpips-weights DIR] [--clip-frames 4] [--max-items 100] [--json report.json] [--grids DIR]

Each image: short side resized to the resolution (bicubic), centre square crop, encoded as a still
(4 identical frames) and scored on its decoded frame. Each video: its first --clip-frames frames at
--fps, same crop. PSNR/SSIM on 8-bit RGB (see megatron_emu3/vq/quality.py). Rows whose media
cannot be read are counted and listed in the JSON.
"""

import argparse
import json
import sys
from pathlib import Path


def evaluate(args) -> dict:
    import torch

    from megatron_emu3.data.media import MediaError, to_pixel_values
    from megatron_emu3.data.vision_tokenizer import load_vq_model
    from megatron_emu3.vq import data, quality

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_vq_model(args.vq_dir, device, torch.float32)
    lpips = None
    if args.lpips_weights:
        from megatron_emu3.vq.lpips import load_lpips

        lpips = load_lpips(args.lpips_weights, device)
    amp = torch.bfloat16 if args.bf16 else None
    items, left_out = data.read_items([args.input])
    if args.max_items:
        items = items[:args.max_items]
    rows, skipped = [], []
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional
        def tqdm(x, **_):
            return x
    for resolution in args.resolutions:
        per_kind = {"image": ([], None), "video": ([], None)}
        for item in tqdm(items, desc=f"{resolution}px", disable=not sys.stderr.isatty()):
            try:
                frames = data.load_frames(item, args.clip_frames, args.fps, args.clip_frames / args.fps + 1, None)
                frames = data.crop(frames, resolution, (1.0, 1.0), None)
            except MediaError as err:
                skipped.append({"resolution": resolution, "item": item.label, "reason": str(err)})
                continue
            pixels = torch.from_numpy(to_pixel_values(frames))[None]
            results, hist = quality.reconstruct(model, pixels, item.kind == "image", lpips, amp)
            found, total = per_kind[item.kind]
            found += results
            per_kind[item.kind] = (found, hist if total is None else total + hist)
            if args.grids:
                quality.save_grids(results, Path(args.grids) / f"{resolution}px" / f"{item.kind}_{item.row:06d}",
                                   args.fps)
        for kind, (results, hist) in per_kind.items():
            if results:
                frames_label = 1 if kind == "image" else args.clip_frames
                rows.append({"resolution": f"{resolution}x{resolution}", "kind": kind, "frames": frames_label,
                             **quality.summarize(results, hist)})
    return {"vq_dir": str(args.vq_dir), "input": str(args.input), "codebook_size": model.config.codebook_size,
            "lpips_weights": args.lpips_weights, "rows": rows, "skipped": skipped,
            "left_out_rows": dict(left_out)}


def format_table(report: dict) -> str:
    """A fixed-width table like the paper's Table 2."""
    head = f"{'Resolution':<11} {'Kind':<6} {'Frames':>6} {'Items':>6} {'LPIPS':>7} {'PSNR':>7} {'SSIM':>7} " \
           f"{'Codes used':>11} {'Perplexity':>10}"
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        lp = f"{r['lpips']:.3f}" if "lpips" in r else "-"
        lines.append(f"{r['resolution']:<11} {r['kind']:<6} {r['frames']:>6} {r['items']:>6} {lp:>7} "
                     f"{r['psnr']:>7.2f} {r['ssim']:>7.3f} {r['codes_used']:>11} {r['perplexity']:>10.1f}")
    notes = [f"codebook {report['codebook_size']} codes; LPIPS: "
             + (report["lpips_weights"] or "not computed (give --lpips-weights)")]
    if report["skipped"]:
        notes.append(f"{len(report['skipped'])} media skipped (see the JSON)")
    return "\n".join(lines + notes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vq-dir", required=True, help="an Emu3VQVAE directory (save_pretrained)")
    p.add_argument("--input", required=True, help="manifest (JSONL/Parquet) with image/video rows")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512], help="square crop sizes (multiples of 8)")
    p.add_argument("--clip-frames", type=int, default=4, help="frames per video clip (a multiple of 4)")
    p.add_argument("--fps", type=float, default=8.0, help="video frame rate the clips are sampled at")
    p.add_argument("--lpips-weights", help="LPIPS VGG-16 weights (directory with vgg16.pth + vgg.pth, or one file)")
    p.add_argument("--max-items", type=int, default=0, help="evaluate only the first N media rows (0: all)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--json", help="write the report here as JSON")
    p.add_argument("--grids", help="write each reconstruction (PNG/MP4 beside the original) under this directory")
    args = p.parse_args(argv)
    if any(r <= 0 or r % 8 for r in args.resolutions) or args.clip_frames <= 0 or args.clip_frames % 4:
        print("eval_vq.py: error: resolutions must be multiples of 8 and --clip-frames a multiple of 4", file=sys.stderr)
        return 2
    from megatron_emu3.logs import configure_logging

    configure_logging()
    try:
        report = evaluate(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"eval_vq.py: error: {err}", file=sys.stderr)
        return 2
    if not report["rows"]:
        print(f"eval_vq.py: error: no image or video in {args.input} could be evaluated "
              f"({len(report['skipped'])} skipped)", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
    sys.exit(main())
