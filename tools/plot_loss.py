"""Plot a run's loss curve(s) from RUN_DIR/metrics.jsonl to a PNG (Pillow only, no matplotlib).

    python tools/plot_loss.py runs/demo/stage1 [runs/demo/stage2 ...] --out loss.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
KEYS = ("loss", "text_loss", "vision_loss")


def read_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: pass a run directory that a training run wrote")
    series: dict[str, list[tuple[int, float]]] = {k: [] for k in KEYS}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"{path}:{line_no}: not JSON ({err})") from None
            for key in KEYS:
                if record.get(key) is not None:
                    series[key].append((int(record["step"]), float(record[key])))
    return {k: v for k, v in series.items() if v}


def plot(curves: dict[str, list[tuple[int, float]]], out: Path, size=(900, 500)) -> None:
    """Draw each named curve on shared axes with a legend and min/max labels."""
    width, height = size
    left, right, top, bottom = 70, 20, 20, 50
    points = [p for c in curves.values() for p in c]
    if not points:
        raise SystemExit("no loss values to plot")
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)

    def xy(step, value):
        return (left + (step - x0) / (x1 - x0) * (width - left - right),
                top + (1 - (value - y0) / (y1 - y0)) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        draw.text((5, xy(x0, value)[1] - 6), f"{value:.3f}", fill="black")
        step = x0 + frac * (x1 - x0)
        draw.text((xy(step, y0)[0] - 10, height - bottom + 8), f"{step:.0f}", fill="black")
    draw.text((width // 2 - 15, height - 20), "step", fill="black")
    for i, (name, curve) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)]
        if len(curve) > 1:
            draw.line([xy(s, v) for s, v in curve], fill=color, width=2)
        else:
            cx, cy = xy(*curve[0])
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
        draw.text((width - right - 220, top + 8 + 14 * i), name, fill=color)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("loss.png"))
    args = parser.parse_args(argv)
    curves = {}
    for run_dir in args.run_dirs:
        for key, curve in read_series(run_dir).items():
            curves[f"{run_dir.name}:{key}"] = curve
    plot(curves, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
