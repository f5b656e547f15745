"""The LAION aesthetic predictor: an MLP on L2-normalised CLIP ViT-L/14 image embeddings, scored 1-10.

Weights come from local paths only (`models.clip_dir`: a CLIP saved with save_pretrained, read with
transformers' CLIPVisionModelWithProjection + CLIPImageProcessor; `models.aesthetic_mlp`: the
predictor's .pth, e.g. sac+logos+ava1-l14-linearMSE.pth, keys layers.{0,2,4,6,7}.{weight,bias}).
The MLP's widths are read from the state dict, so the same code loads the real predictor and the
tiny random one of the tests (`save_random_aesthetic_model`, named random so nobody mistakes it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MLP_LAYERS = (0, 2, 4, 6, 7)  # Linear layers of the original nn.Sequential (dropouts in between)


class AestheticsUnavailable(RuntimeError):
    """The aesthetics rule cannot run with the given model paths."""


def build_mlp(state: dict):
    """The predictor's nn.Sequential (Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear)."""
    from torch import nn

    try:
        shapes = [tuple(state[f"layers.{i}.weight"].shape) for i in MLP_LAYERS]
    except KeyError as err:
        raise AestheticsUnavailable(f"the aesthetic MLP has no {err}; expected the LAION predictor's keys "
                                    f"layers.{{{','.join(map(str, MLP_LAYERS))}}}.weight/bias") from err
    lin = [nn.Linear(i, o) for o, i in shapes]
    mlp = nn.Sequential(lin[0], nn.Dropout(0.2), lin[1], nn.Dropout(0.2), lin[2], nn.Dropout(0.1), lin[3], lin[4])
    mlp.load_state_dict({f"{i}.{k}": state[f"layers.{i}.{k}"] for i in MLP_LAYERS for k in ("weight", "bias")})
    return mlp.eval()


def _image_processor_class():
    """The Pillow CLIP processor where transformers has one (its default needs torchvision)."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


class AestheticScorer:
    """CLIP image embedding -> aesthetic score, batched, on one device."""

    def __init__(self, clip_dir: str, mlp_path: str, device: str = "cpu"):
        import torch
        from transformers import CLIPVisionModelWithProjection

        for path in (clip_dir, mlp_path):
            if not Path(path).exists():
                raise AestheticsUnavailable(f"aesthetics model path {path} does not exist")
        self.device = device
        self.processor = _image_processor_class().from_pretrained(clip_dir)
        self.clip = CLIPVisionModelWithProjection.from_pretrained(clip_dir).to(device).eval()
        self.mlp = build_mlp(torch.load(mlp_path, map_location="cpu", weights_only=True)).to(device)
        if self.mlp[0].in_features != self.clip.config.projection_dim:
            raise AestheticsUnavailable(
                f"the aesthetic MLP takes {self.mlp[0].in_features}-d embeddings but the CLIP in {clip_dir} gives "
                f"{self.clip.config.projection_dim}-d; the LAION predictor needs CLIP ViT-L/14 (768)")

    def scores(self, pictures: list[np.ndarray]) -> list[float]:
        """Scores of RGB uint8 pictures."""
        import torch

        if not pictures:
            return []
        with torch.inference_mode():
            pixels = self.processor(images=list(pictures), return_tensors="pt")["pixel_values"].to(self.device)
            embeds = self.clip(pixel_values=pixels).image_embeds.float()
            embeds = embeds / embeds.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return [round(float(s), 4) for s in self.mlp(embeds).squeeze(-1).cpu()]


def save_random_aesthetic_model(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny randomly initialised CLIP vision tower and aesthetic MLP (tests only: its scores mean
    nothing). Returns (clip_dir, mlp_path)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    directory = Path(directory)
    clip_dir, mlp_path = directory / "random-tiny-clip-vision", directory / "random-aesthetic-mlp.pth"
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(clip_dir)
    _image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)
    widths = [16, 32, 16, 8, 4, 1]
    state = {}
    for layer, (i, o) in zip(MLP_LAYERS, zip(widths, widths[1:])):
        linear = torch.nn.Linear(i, o)  # weights scaled up so different pictures get visibly different scores
        state[f"layers.{layer}.weight"], state[f"layers.{layer}.bias"] = linear.weight.data * 4, linear.bias.data
    torch.save(state, mlp_path)
    return clip_dir, mlp_path
