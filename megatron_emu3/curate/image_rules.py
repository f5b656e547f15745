"""Cheap per-picture measurements and their rules: resolution and colour (monochrome / washed out /
near-uniform). Each check returns None when the picture passes, or (rule, measured value, reason)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from megatron_emu3.curate.rules import ColourRule, SizeRule

Failure = tuple[str, object, str]


def thumbnail(img: Image.Image, side: int = 256) -> np.ndarray:
    """RGB uint8 array with the longer side at most `side` (colour statistics do not need more)."""
    scale = side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return np.asarray(img.convert("RGB"))


def check_size(rule: SizeRule, width: int, height: int) -> Failure | None:
    if not rule.enabled:
        return None
    if min(width, height) < rule.min_side:
        return ("image.size", f"{width}x{height}", f"a side is under {rule.min_side} px")
    if width * height < rule.min_area:
        return ("image.size", f"{width}x{height}", f"area {width * height} is under {rule.min_area} px")
    return None


def colour_scores(rgb: np.ndarray) -> dict[str, float]:
    """chroma: mean |pixel - its grey| (0 for a grey picture); saturation: mean HSV S (0-1);
    luma_std: standard deviation of the BT.601 luma (0-255)."""
    arr = rgb.astype(np.float32)
    grey = arr.mean(axis=-1, keepdims=True)
    hi, lo = arr.max(axis=-1), arr.min(axis=-1)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    luma = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return {"chroma": round(float(np.abs(arr - grey).mean()), 3), "saturation": round(float(saturation.mean()), 4),
            "luma_std": round(float(luma.std()), 3)}


def check_colour(rule: ColourRule, scores: dict[str, float]) -> Failure | None:
    if not rule.enabled:
        return None
    if scores["chroma"] < rule.min_chroma:
        return ("colour.monochrome", scores["chroma"], f"chroma {scores['chroma']} < {rule.min_chroma} (a grey picture)")
    if scores["saturation"] < rule.min_saturation:
        return ("colour.low_saturation", scores["saturation"],
                f"mean saturation {scores['saturation']} < {rule.min_saturation}")
    if scores["luma_std"] < rule.min_luma_std:
        return ("colour.near_uniform", scores["luma_std"], f"luma std {scores['luma_std']} < {rule.min_luma_std}")
    return None
