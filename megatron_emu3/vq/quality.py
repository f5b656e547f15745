"""Reconstruction quality of a VQ tokenizer: PSNR, SSIM, LPIPS and codebook usage, and the
reconstruction grids (PNG for images, MP4 for clips) of a held-out set.

PSNR and SSIM follow the usual conventions on 8-bit RGB: PSNR = 10 log10(255^2 / MSE) per image
(per frame for clips) averaged; SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, per channel then averaged (what `skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)` computes, without
its border crop). Both are computed on the uint8 reconstructions a user would see.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megatron_emu3.data.media import from_pixel_values
from megatron_emu3.vq.model import code_histogram, perplexity, vq_forward


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """uint8-valued float tensors (N, 3, H, W) -> PSNR (N,) in dB (capped at 100 for equal images)."""
    mse = (a.double() - b.double()).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))).clamp(max=100.0)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """uint8-valued (N, C, H, W) -> SSIM (N,), Gaussian 11x11 window, valid region only."""
    a, b = a.double(), b.double()
    c = a.shape[1]
    window = _gaussian_window().to(a.device).expand(c, 1, 11, 11)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x):
        return F.conv2d(x, window, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def to_uint8_float(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the uint8 values a saved picture holds, as float."""
    return torch.round((pixels.float().clamp(-1, 1) + 1) * 127.5)


@dataclasses.dataclass
class Reconstruction:
    original: np.ndarray  # uint8 (T, H, W, 3); T = 1 for an image
    recon: np.ndarray
    psnr: float
    ssim: float
    lpips: float | None


@torch.no_grad()
def reconstruct(model, pixels: torch.Tensor, still: bool, lpips=None, autocast_dtype=None):
    """pixels (B, T, 3, H, W) in [-1, 1] -> per-sample Reconstructions and the code histogram.
    A still is scored on its first decoded frame (what `Emu3VQVAE.decode` returns for images)."""
    device = next(model.parameters()).device
    pixels = pixels.to(device)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = vq_forward(model, pixels, still)
    recon = out.recon[:, :1] if still else out.recon
    b, t = recon.shape[:2]
    ref = to_uint8_float(pixels.reshape(b * t, *pixels.shape[2:]))
    rec = to_uint8_float(recon.reshape(b * t, *recon.shape[2:]))
    p, s = psnr(ref, rec).view(b, t).mean(1), ssim(ref, rec).view(b, t).mean(1)
    lp = None
    if lpips is not None:
        lp = lpips(ref / 127.5 - 1, rec / 127.5 - 1).view(b, t).mean(1)
    results = []
    for i in range(b):
        results.append(Reconstruction(
            from_pixel_values(pixels[i].float().cpu().numpy()), from_pixel_values(recon[i].float().cpu().numpy()),
            float(p[i]), float(s[i]), None if lp is None else float(lp[i])))
    return results, code_histogram(out.codes, model.config.codebook_size)


def summarize(results: list[Reconstruction], hist: torch.Tensor) -> dict:
    """Mean metrics and codebook usage over a set of reconstructions."""
    out = {"items": len(results),
           "psnr": float(np.mean([r.psnr for r in results])),
           "ssim": float(np.mean([r.ssim for r in results])),
           "codes_used": int((hist > 0).sum()),
           "codebook_usage": float((hist > 0).double().mean()),
           "perplexity": perplexity(hist)}
    if results and results[0].lpips is not None:
        out["lpips"] = float(np.mean([r.lpips for r in results]))
    return out


def save_grids(results: list[Reconstruction], out_dir: Path, fps: float = 8.0) -> list[Path]:
    """images.png: originals (top row) over reconstructions (bottom row); clip_NN.mp4: each clip's
    original beside its reconstruction."""
    from megatron_emu3.preprocess.inspect import save_pixels

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    stills = [r for r in results if r.original.shape[0] == 1]
    if stills:
        top = np.concatenate([r.original[0] for r in stills], axis=1)
        bottom = np.concatenate([r.recon[0] for r in stills], axis=1)
        written.append(save_pixels(np.concatenate([top, bottom], axis=0), out_dir / "images.png"))
    for i, r in enumerate(r for r in results if r.original.shape[0] > 1):
        side_by_side = np.concatenate([r.original, r.recon], axis=2)
        written.append(save_pixels(side_by_side, out_dir / f"clip_{i:02d}.mp4", fps))
    return written
