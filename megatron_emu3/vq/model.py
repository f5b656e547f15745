"""transformers' `Emu3VQVAE` as a trainable autoencoder: build it, run it end to end with a
straight-through quantiser, and keep its codebook alive.

`Emu3VQVAE` has no training forward (only `encode` -> codes and `decode` codes -> pixels) and its
quantiser returns indices, not the commitment loss. `vq_forward` runs the same modules: the per-frame
encoder (once per image; images are clips of 4 identical frames, as in preprocessing), the temporal
encoder and `quant_conv`, nearest-code lookup, the straight-through estimator, then
`post_quant_conv` and the decoder exactly as `Emu3VQVAE.decode` does. The codebook and commitment
losses are computed from the encoder output z and its codes e: ||sg(z) - e||^2 and ||z - sg(e)||^2.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
import torch.nn.functional as F

from megatron_emu3.data.vision_tokenizer import load_vq_model, quantize, spatial_latents, temporal_latents, tiny_vq_config

logger = logging.getLogger(__name__)

ARCH_FIELDS = ("codebook_size", "embed_dim", "latent_channels", "base_channels", "channel_multiplier",
               "num_res_blocks", "attn_resolutions")


def build_model(model_cfg):
    """A trainable Emu3VQVAE (fp32, train mode) from `model.init_from` or the preset + overrides."""
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    if model_cfg.init_from:
        model = load_vq_model(model_cfg.init_from, "cpu", torch.float32)
        changed = [f for f in ARCH_FIELDS if getattr(model_cfg, f) is not None
                   and getattr(model_cfg, f) != getattr(model.config, f)]
        if changed:
            raise ValueError(f"model.{changed[0]} differs from {model_cfg.init_from}'s config; an initial "
                             "model's architecture cannot be changed (drop the override or model.init_from)")
        logger.info("VQ model from %s", model_cfg.init_from)
    else:
        if model_cfg.preset == "tiny":
            config = tiny_vq_config()
        elif model_cfg.preset == "emu3":
            config = Emu3VQVAEConfig()  # transformers' defaults are the released Emu3 tokenizer
        else:
            raise ValueError(f"model.preset={model_cfg.preset!r}; choose tiny or emu3 (or set model.init_from)")
        for name in ARCH_FIELDS:
            if getattr(model_cfg, name) is not None:
                setattr(config, name, getattr(model_cfg, name))
        config.hidden_size = config.base_channels * config.channel_multiplier[-1]  # the middle attention's width
        if config.base_channels % 32:
            raise ValueError(f"model.base_channels={config.base_channels}: GroupNorm uses 32 groups, so it "
                             "must be a multiple of 32")
        model = Emu3VQVAE(config)
        logger.info("VQ model from preset %r (random init)", model_cfg.preset)
    n = sum(p.numel() for p in model.parameters())
    logger.info("Emu3VQVAE: %.1fM parameters, codebook %d x %d", n / 1e6, model.config.codebook_size,
                model.config.embed_dim)
    return model.float()


def set_train_mode(model, train_batchnorm: bool) -> None:
    """Train mode, except the temporal BatchNorm3d layers unless `train_batchnorm` (they then keep
    their running statistics: deterministic across data-parallel layouts, like inference)."""
    model.train()
    if not train_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


@dataclasses.dataclass
class VQOutput:
    recon: torch.Tensor  # (B, T, 3, H, W); a still gives its 4 decoded frames
    codes: torch.Tensor  # (B, T/4, h, w)
    latents: torch.Tensor  # (B, T/4, C, h, w), before quantisation
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


def vq_forward(model, pixels: torch.Tensor, still: bool) -> VQOutput:
    """pixels (B, T, 3, H, W) in [-1, 1]; `still`: T == 1, an image encoded as 4 identical frames."""
    b, t = pixels.shape[:2]
    temporal = model.config.temporal_downsample_factor
    hidden = spatial_latents(model, pixels.reshape(b * t, *pixels.shape[2:]))
    if still:
        if t != 1:
            raise ValueError(f"a still is one frame, got {t}")
        hidden = hidden.unsqueeze(1).expand(-1, temporal, *hidden.shape[1:]).reshape(-1, *hidden.shape[1:])
        t = temporal
    latents = temporal_latents(model, hidden, t)
    embedding = model.quantize.embedding.weight
    with torch.no_grad(), torch.autocast(latents.device.type, enabled=False):  # nearest code in full precision
        codes = quantize(model, latents.to(embedding.dtype))
    quantised = F.embedding(codes, embedding).permute(0, 1, 4, 2, 3).to(latents.dtype)  # b t c h w
    codebook_loss = F.mse_loss(quantised.float(), latents.detach().float())
    commitment_loss = F.mse_loss(latents.float(), quantised.detach().float())
    straight_through = latents + (quantised - latents).detach()
    return VQOutput(decode_latents(model, straight_through), codes, latents, codebook_loss, commitment_loss)


def decode_latents(model, quant: torch.Tensor) -> torch.Tensor:
    """Quantised latents (B, t, C, h, w) -> pixels (B, 4t, 3, 8h, 8w), as `Emu3VQVAE.decode`."""
    b, t, _, h, w = quant.shape
    post_quant = model.post_quant_conv(quant.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)
    video = model.decoder(post_quant, quant)
    factor = model.spatial_scale_factor
    return video.reshape(b, t * model.config.temporal_downsample_factor, model.config.out_channels,
                         h * factor, w * factor)


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Hits per code (float64, on the codes' device)."""
    return torch.bincount(codes.flatten(), minlength=codebook_size).double()


def perplexity(hist: torch.Tensor) -> float:
    """exp(entropy) of a code histogram: the effective number of codes in use."""
    p = hist / hist.sum().clamp_min(1)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class CodebookUsage:
    """EMA of per-step code hits; codes under the threshold are dead (and may be restarted)."""

    def __init__(self, codebook_size: int, decay: float, threshold: float):
        self.decay, self.threshold = decay, threshold
        self.ema = torch.full((codebook_size,), float(threshold), dtype=torch.float64)

    def update(self, hist: torch.Tensor) -> None:
        self.ema.mul_(self.decay).add_(hist.cpu(), alpha=1.0 - self.decay)

    def dead(self) -> torch.Tensor:
        return torch.nonzero(self.ema < self.threshold).flatten()

    def state_dict(self) -> dict:
        return {"ema": self.ema.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.copy_(state["ema"])


@torch.no_grad()
def fresh_codes(count: int, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`count` new code vectors (count, C): encoder outputs of this step drawn at random, with a
    little noise when there are fewer outputs than codes to restart."""
    pool = latents.detach().float().permute(0, 1, 3, 4, 2).reshape(-1, latents.shape[2]).cpu()
    fresh = pool[torch.randint(0, pool.shape[0], (count,), generator=generator)]
    if count > pool.shape[0]:
        fresh = fresh + 0.01 * pool.std() * torch.randn(fresh.shape, generator=generator)
    return fresh


@torch.no_grad()
def restart_codes(model, dead: torch.Tensor, fresh: torch.Tensor) -> None:
    """Move the dead codes onto `fresh` (the same on every rank)."""
    weight = model.quantize.embedding.weight
    weight[dead.to(weight.device)] = fresh.to(weight.device, weight.dtype)


class EMA:
    """Exponential moving average of the generator's parameters (buffers are copied)."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model) -> None:
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[name].mul_(self.decay).add_(value.float(), alpha=1.0 - self.decay)
            else:
                self.shadow[name].copy_(value)

    def copy_of(self, model):
        """A copy of `model` holding the averaged weights."""
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(self.shadow)
        return averaged

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)
