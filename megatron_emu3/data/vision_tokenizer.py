"""The Emu3 vision tokenizer: transformers' `Emu3VQVAE` from a local directory, always in eval mode.

- `encode_images` (the 2-D path): an image is a clip of 4 identical frames, so the per-frame spatial
  encoder (conv_in .. conv_out, which dominates the cost) runs once per image and its output is
  repeated 4 times only before the temporal convolutions. The codes equal those of
  `encode_images_as_clips` (transformers' own 4-repeated-frame path), which the tests check.
- `encode_videos`: (B, T, 3, H, W) with T a multiple of 4 -> codes (B, T/4, H/8, W/8).
- `encode_image_list`: images of mixed sizes, batched by resolution, codes back in input order.
- `decode`: codes -> uint8 pixels (images (H, W, 3), videos (T, H, W, 3)) for inspection/generation.
`spatial_latents` / `temporal_latents` are the encoder's two halves, differentiable (the VQ trainer
uses them too). Inputs are float pixel values in [-1, 1] (`megatron_emu3.data.media`). bf16 by default on GPU.
Weights always come from a local directory; nothing is downloaded.

The interface every vision tokenizer offers (what preprocessing, the inspector and generation use):

    layout: tokens.VisionLayout   # name, codebook size, spatial / temporal factor, id of code 0
    encode_images((B, 3, H, W)) -> (B, H/s, W/s) int64 codes      H, W multiples of s
    encode_videos((B, T, 3, H, W)) -> (B, T/t, H/s, W/s)          T a multiple of t
    decode((h, w) | (n, h, w)) -> uint8 (H, W, 3) | (n*t, H, W, 3)

`Emu3VisionTokenizer` implements it for any `Emu3VQVAE` configuration: the factors and codebook come
from the VQ's config.json (channel_multiplier, temporal_downsample_factor, codebook_size) and the id
of code 0 from its optional `vision_token_offset` key (default: right after the special tokens), so a
VQ of other factors or codebook size needs no code. Another architecture implements the four members
above and is constructed in `load_vision_tokenizer`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from megatron_emu3.data import tokens


class VisionTokenizerError(RuntimeError):
    """The VQ directory or the model in it is unusable (the message says what to do)."""


def load_vq_model(vq_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """`Emu3VQVAE.from_pretrained(vq_dir)` (local files only), eval mode, on `device`."""
    from transformers import Emu3VQVAE

    vq_dir = Path(vq_dir)
    if not (vq_dir / "config.json").is_file():
        raise VisionTokenizerError(
            f"--vq-dir {vq_dir} has no config.json; point it at a local Emu3 vision tokenizer directory "
            "(a converted Emu3-VisionTokenizer, or an Emu3VQVAE saved with save_pretrained)")
    try:
        model = Emu3VQVAE.from_pretrained(str(vq_dir), local_files_only=True)
    except Exception as err:  # transformers raises many types for a bad directory
        raise VisionTokenizerError(f"cannot load Emu3VQVAE from {vq_dir}: {type(err).__name__}: {err}") from err
    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def tiny_vq_config(codebook_size: int = 32_768, spatial_factor: int = 8, temporal_factor: int = 4):
    """A random-weight test/demo Emu3VQVAEConfig, ~4.2M parameters: by default 8x spatial and 4x
    temporal downsampling and 32,768 codes like the real one, ~0.02 s per 64x64 image on one CPU core.
    Other factors (powers of 2) and codebook sizes give a second tokenizer of another layout.
    (GroupNorm uses 32 groups, so every channel count must be a multiple of 32.)"""
    from transformers import Emu3VQVAEConfig

    levels = spatial_factor.bit_length() - 1
    if spatial_factor != 2 ** levels or levels < 2:
        raise ValueError(f"spatial_factor must be a power of 2 >= 4, got {spatial_factor}")
    # one downsampling per multiplier after the first; the last width (128) is hidden_size
    return Emu3VQVAEConfig(base_channels=64, channel_multiplier=[1, 1] + [2] * (levels - 1), num_res_blocks=1,
                           attn_resolutions=[], embed_dim=4, latent_channels=4, hidden_size=128,
                           codebook_size=codebook_size, temporal_downsample_factor=temporal_factor)


def save_tiny_vq(path: str | Path, seed: int = 0, **layout) -> Path:
    """A random tiny Emu3VQVAE written with save_pretrained (tests and the demo; never downloaded);
    `layout`: codebook_size / spatial_factor / temporal_factor of `tiny_vq_config`."""
    from transformers import Emu3VQVAE

    torch.manual_seed(seed)
    Emu3VQVAE(tiny_vq_config(**layout)).eval().save_pretrained(str(path))
    return Path(path)


def load_vision_tokenizer(vq_dir: str | Path, device: str | torch.device = "cpu",
                          dtype: torch.dtype | None = None) -> "Emu3VisionTokenizer":
    """The vision tokenizer saved in `vq_dir` (today: any Emu3VQVAE configuration)."""
    return Emu3VisionTokenizer.from_dir(vq_dir, device, dtype)


def spatial_latents(model, frames: torch.Tensor) -> torch.Tensor:
    """The per-frame (2-D) half of `Emu3VQVAE.encoder`: frames (N, 3, H, W) -> (N, C, H/8, W/8).
    Differentiable (the VQ trainer uses it too)."""
    enc = model.encoder
    hidden = enc.conv_in(frames)
    hidden = enc.down_block(hidden)
    hidden = enc.middle_block(hidden)
    hidden = enc.norm_out(hidden)
    hidden = hidden * torch.sigmoid(hidden)
    return enc.conv_out(hidden)


def temporal_latents(model, hidden: torch.Tensor, temporal: int) -> torch.Tensor:
    """Spatial latents ((B*T), C, h, w) -> pre-quantisation latents (B, T/4, embed_dim, h, w): the
    encoder's temporal convolutions and `quant_conv`, as in `Emu3VQVAE.encode`."""
    enc = model.encoder
    hidden = hidden.reshape(-1, temporal, *hidden.shape[1:]).permute(0, 2, 1, 3, 4)
    for conv in enc.time_conv:
        hidden = conv(hidden)
        hidden = hidden * torch.sigmoid(hidden)
    for layer in enc.time_res_stack:
        hidden = layer(hidden)
    hidden = model.quant_conv(hidden)  # b c t h w
    return hidden.permute(0, 2, 1, 3, 4)


QUANTIZE_PIECE_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 25}
"""Largest distance matrix (latent vectors x codes) one nearest-code search materialises, per device.
The quantizer compares every latent with every code at once, in five passes over that matrix; a
batch of 512^2 pictures against 32,768 codes would otherwise need gigabytes. On a CPU the passes are
memory-bound: a 2 MiB piece stays in cache (4 frames of 64x64 latents x 32,768 codes: 5.2 s -> 1.3 s
on one core, the same codes). On a GPU, pieces of 128 MiB keep the kernel launches few."""


def quantize(model, latents: torch.Tensor, max_elements: int | None = None) -> torch.Tensor:
    """Nearest codes (B, T, h, w) of pre-quantisation latents (B, T, C, h, w) through the model's own
    quantizer, in pieces of at most `max_elements` distances (default: QUANTIZE_PIECE_ELEMENTS for the
    device; at least one latent vector per piece). The search is per vector, so the codes are the
    quantizer's whatever the pieces."""
    b, t, c, h, w = latents.shape
    if max_elements is None:
        max_elements = QUANTIZE_PIECE_ELEMENTS.get(latents.device.type, QUANTIZE_PIECE_ELEMENTS["cuda"])
    codes_in_book = model.quantize.embedding.num_embeddings
    if b * t * h * w * codes_in_book <= max_elements:
        return model.quantize(latents)
    vectors = latents.permute(0, 1, 3, 4, 2).reshape(-1, c)
    per_piece = max(1, max_elements // codes_in_book)
    out = torch.empty(vectors.shape[0], dtype=torch.long, device=latents.device)
    for i in range(0, vectors.shape[0], per_piece):
        piece = vectors[i:i + per_piece]  # as the quantizer's (1, 1, C, 1, n) input
        out[i:i + per_piece] = model.quantize(piece.T.reshape(1, 1, c, 1, -1)).reshape(-1)
    return out.reshape(b, t, h, w)


class Emu3VisionTokenizer:
    """Pixels <-> codebook indices with an `Emu3VQVAE`."""

    def __init__(self, model, name: str = "Emu3VQVAE"):
        self.model = model.eval()
        cfg = model.config
        self.spatial_factor = 2 ** (len(cfg.channel_multiplier) - 1)
        self.temporal_factor = int(cfg.temporal_downsample_factor)
        self.codebook_size = int(cfg.codebook_size)
        self.layout = tokens.VisionLayout(name, self.codebook_size, self.spatial_factor, self.temporal_factor,
                                          int(getattr(cfg, "vision_token_offset", tokens.FIRST_CODE_ID)))

    @classmethod
    def from_dir(cls, vq_dir: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> "Emu3VisionTokenizer":
        """Named after its directory and the digest of its config.json (which fixes the layout)."""
        digest = hashlib.sha256(Path(vq_dir, "config.json").read_bytes()).hexdigest()[:12]
        return cls(load_vq_model(vq_dir, device, dtype), name=f"Emu3VQVAE {Path(vq_dir).name} (config {digest})")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _check(self, pixels: torch.Tensor) -> None:
        h, w = pixels.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"pixel size {h}x{w} is not a multiple of {self.spatial_factor}")

    def _as_tensor(self, pixels) -> torch.Tensor:
        return torch.as_tensor(np.asarray(pixels) if not torch.is_tensor(pixels) else pixels).to(
            device=self.device, dtype=self.dtype)

    def _codes_from_latents(self, hidden: torch.Tensor, temporal: int) -> torch.Tensor:
        """Spatial encoder output ((B*T), C, h, w) -> codes (B, T/4, h, w): temporal convs + quantizer."""
        return quantize(self.model, temporal_latents(self.model, hidden, temporal))

    def _spatial(self, frames: torch.Tensor) -> torch.Tensor:
        return spatial_latents(self.model, frames)

    @torch.inference_mode()
    def encode_images(self, pixels) -> np.ndarray:
        """The 2-D path: (B, 3, H, W) in [-1, 1] -> codes (B, H/8, W/8), int64."""
        pixels = self._as_tensor(pixels)
        self._check(pixels)
        hidden = self._spatial(pixels)  # (B, C, h, w), once per image
        hidden = hidden.unsqueeze(1).expand(-1, self.temporal_factor, *hidden.shape[1:])
        codes = self._codes_from_latents(hidden.reshape(-1, *hidden.shape[2:]), self.temporal_factor)
        return codes[:, 0].cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def encode_images_as_clips(self, pixels) -> np.ndarray:
        """transformers' path: each image repeated as 4 frames through the whole encoder (reference)."""
        pixels = self._as_tensor(pixels)
        self._check(pixels)
        b, _, h, w = pixels.shape
        sizes = torch.tensor([[h, w]] * b)
        out = self.model.encode(pixels, image_sizes=sizes)
        return torch.stack(list(out.image_tokens)).cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def encode_videos(self, pixels) -> np.ndarray:
        """(B, T, 3, H, W) in [-1, 1], T a multiple of 4 -> codes (B, T/4, H/8, W/8), int64."""
        pixels = self._as_tensor(pixels)
        self._check(pixels)
        b, t = pixels.shape[:2]
        if t % self.temporal_factor:
            raise ValueError(f"a clip needs a multiple of {self.temporal_factor} frames, got {t}")
        hidden = self._spatial(pixels.reshape(b * t, *pixels.shape[2:]))
        return self._codes_from_latents(hidden, t).cpu().numpy().astype(np.int64)

    def encode_image_list(self, images: Sequence[np.ndarray], max_batch: int = 16) -> list[np.ndarray]:
        """Images (3, H, W) of any sizes: batched by resolution, codes returned in input order."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            groups[tuple(np.shape(img))].append(i)
        out: list[np.ndarray | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), max_batch):
                chunk = indices[start:start + max_batch]
                codes = self.encode_images(np.stack([images[i] for i in chunk]))
                for i, c in zip(chunk, codes):
                    out[i] = c
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def decode(self, codes) -> np.ndarray:
        """Codes (h, w) -> uint8 (H, W, 3); codes (t, h, w) -> uint8 (4t, H, W, 3)."""
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long, device=self.device)
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        pixels = self.model.decode(codes[None])[0].float().cpu().numpy()
        from megatron_emu3.data.media import from_pixel_values

        return from_pixel_values(pixels)
