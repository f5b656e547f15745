"""Make a small synthetic captioned corpus and a tiny random Emu3 vision tokenizer (for `make demo`).

    python examples/make_demo_data.py --out runs/demo/data [--images 24 --videos 6 --texts 12 --size 64]

Writes, under --out:
- images/*.png: coloured shapes (circle, square, triangle) on plain backgrounds, each captioned by
  what is drawn ("a red circle on the left of a white background");
- videos/*.mp4 (h264 via PyAV): a shape moving across the frame, captioned with its direction;
- stage1.jsonl (texts + images) and videos.jsonl: the same rows split by training stage;
- manifest.jsonl: one row per image (generation, every third one understanding), video and short text;
- vq/: a random `Emu3VQVAE` of ~4M parameters (`vision_tokenizer.tiny_vq_config`), save_pretrained.
Deterministic for a given --seed. Runs in a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
from megatron_emu3.data.vision_tokenizer import save_tiny_vq  # noqa: E402

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
          "purple": (140, 60, 170), "orange": (240, 130, 30)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": 0.3, "centre": 0.5, "right": 0.7}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, color) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)


def make_image(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    shape, color, bg, place = (rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(BACKGROUNDS)),
                               rng.choice(list(PLACES)))
    img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
    draw_shape(ImageDraw.Draw(img), shape, PLACES[place] * size, size / 2, size * rng.uniform(0.15, 0.25),
               COLORS[color])
    where = "in the centre" if place == "centre" else f"on the {place}"
    return img, f"a {color} {shape} {where} of a {bg} background"


def make_video(rng: random.Random, path: Path, size: int, frames: int, fps: int) -> str:
    import av

    shape, color, bg = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(BACKGROUNDS))
    rightwards = rng.random() < 0.5
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for i in range(frames):
            x = (i + 0.5) / frames
            cx = (x if rightwards else 1 - x) * size
            img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
            draw_shape(ImageDraw.Draw(img), shape, cx, size / 2, size * 0.18, COLORS[color])
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    direction = "left to right" if rightwards else "right to left"
    return f"a {color} {shape} moving from {direction} across a {bg} background"


TEXTS = [
    "Shapes are described by their colour, their form and where they sit in the picture.",
    "A circle has no corners; a square has four equal sides; a triangle has three.",
    "Videos in this corpus show one shape sliding across a plain background.",
    "Red, green, blue, yellow, purple and orange are the colours used here.",
    "多模态模型把文字、图像和视频都变成同一个序列。",
    "Les formes se déplacent de gauche à droite ou de droite à gauche.",
]


def make_corpus(out: Path, images: int, videos: int, texts: int, size: int, video_frames: int, fps: int,
                seed: int) -> dict:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        img, caption = make_image(rng, size)
        name = f"images/{i:04d}.png"
        img.save(out / name)
        rows.append({"text": caption, "image": name, "task": "understanding" if i % 3 == 2 else "generation"})
    for i in range(videos):
        name = f"videos/{i:04d}.mp4"
        rows.append({"text": make_video(rng, out / name, size, video_frames, fps), "video": name})
    for i in range(texts):
        rows.append({"text": TEXTS[i % len(TEXTS)] + f" (note {i})"})
    rng.shuffle(rows)
    # the whole corpus, and the two stages' parts: text + images (stage 1) and videos (added in stage 2)
    parts = {"manifest.jsonl": rows, "stage1.jsonl": [r for r in rows if "video" not in r],
             "videos.jsonl": [r for r in rows if "video" in r]}
    for name, part in parts.items():
        with open(out / name, "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"rows": len(rows), "images": images, "videos": videos, "texts": texts}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (manifest.jsonl, images/, videos/, vq/)")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--texts", type=int, default=12)
    p.add_argument("--size", type=int, default=64, help="image / video side in pixels (multiple of 8)")
    p.add_argument("--video-frames", type=int, default=16)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-vq", action="store_true", help="do not write the tiny vision tokenizer")
    args = p.parse_args(argv)
    out = Path(args.out)
    stats = make_corpus(out, args.images, args.videos, args.texts, args.size, args.video_frames, args.fps, args.seed)
    if not args.no_vq:
        save_tiny_vq(out / "vq", args.seed)
    print(f"demo corpus in {out}: {stats['rows']} rows ({stats['images']} images, {stats['videos']} videos, "
          f"{stats['texts']} texts); manifest {out / 'manifest.jsonl'}" + ("" if args.no_vq else f"; VQ {out / 'vq'}"))


if __name__ == "__main__":
    main()
