"""One micro-batch of VQ training: the generator's loss and backward, then the discriminator's.

Generator: l2_weight * L2 + lpips_weight * LPIPS (together the "nll" of taming-transformers)
+ adaptive_weight * disc_weight * GAN + codebook_weight * (codebook + commitment_beta * commitment).
The adaptive weight is ||grad nll|| / (||grad GAN|| + 1e-4) at the decoder's last convolution
(clamped to [0, 1e4], no gradient), with both gradients averaged over the data-parallel ranks first
so every rank, and a single rank holding the whole batch, uses the same weight.
Stills (images) are scored on their first decoded frame (what `Emu3VQVAE.decode` returns for an
image) by the 2-D discriminator; clips on all frames, by the 3-D discriminator or frame by frame.
A micro-batch holds groups of equal shape; each group's losses count by its share of the samples.
With gradient accumulation the adaptive weight is computed per micro-batch (as taming does per batch).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_emu3.vq.discriminator import discriminator_loss, generator_loss
from megatron_emu3.vq.model import code_histogram, vq_forward


@dataclasses.dataclass
class Parts:
    """What the objective needs besides the batch."""

    model: torch.nn.Module
    disc2d: torch.nn.Module
    disc3d: torch.nn.Module | None  # None: clips are judged frame by frame
    lpips: torch.nn.Module | None
    loss_cfg: object
    world: int
    autocast: contextlib.AbstractContextManager | None = None

    def amp(self):
        return self.autocast() if self.autocast is not None else contextlib.nullcontext()


def _frames(group, recon):
    """(real, fake) frames (N, 3, H, W) for the pixel and perceptual losses."""
    if group.still:
        return group.pixels[:, 0], recon[:, 0]
    return group.pixels.flatten(0, 1), recon.flatten(0, 1)


def _disc_logits(parts: Parts, still: bool, clip: torch.Tensor) -> torch.Tensor:
    """clip: (B, T, 3, H, W) (T = 1 for stills)."""
    if still or parts.disc3d is None:
        return parts.disc2d(clip.flatten(0, 1))
    return parts.disc3d(clip.permute(0, 2, 1, 3, 4))


def _mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t)
        t = t / world
    return t


def generator_backward(parts: Parts, groups, micro_batch: int, grad_accum: int, gan_active: bool) -> dict:
    """Forward + backward of the generator on one micro-batch; returns detached outputs and metrics."""
    cfg = parts.loss_cfg
    zero = torch.zeros((), device=groups[0].pixels.device)
    terms = {"l2": zero, "lpips": zero, "codebook": zero, "commitment": zero, "gan": zero}
    fakes, hist, latents = [], None, None
    parts.disc2d.requires_grad_(False)
    if parts.disc3d is not None:
        parts.disc3d.requires_grad_(False)
    for group in groups:
        share = group.pixels.shape[0] / micro_batch
        with parts.amp():
            out = vq_forward(parts.model, group.pixels, group.still)
            recon = out.recon[:, :1] if group.still else out.recon
            real, fake = _frames(group, recon)
            terms["l2"] = terms["l2"] + share * F.mse_loss(fake.float(), real.float())
            if parts.lpips is not None and cfg.lpips_weight > 0:
                terms["lpips"] = terms["lpips"] + share * parts.lpips(fake, real).float().mean()
            if gan_active:
                terms["gan"] = terms["gan"] + share * generator_loss(
                    _disc_logits(parts, group.still, recon).float(), cfg.gan_loss)
        terms["codebook"] = terms["codebook"] + share * out.codebook_loss
        terms["commitment"] = terms["commitment"] + share * out.commitment_loss
        fakes.append(recon.detach())
        h = code_histogram(out.codes, parts.model.config.codebook_size)
        hist = h if hist is None else hist + h
        latents = out.latents.detach()
    nll = cfg.l2_weight * terms["l2"] + cfg.lpips_weight * terms["lpips"]
    gan_weight = torch.zeros((), device=nll.device)
    if gan_active:
        gan_weight = torch.tensor(cfg.disc_weight, device=nll.device)
        if cfg.adaptive_disc_weight:
            last = parts.model.decoder.conv_out.weight
            if not nll.requires_grad:
                raise ValueError("loss.adaptive_disc_weight needs a reconstruction term: set loss.l2_weight "
                                 "or loss.lpips_weight > 0")
            g_nll = _mean_over_ranks(torch.autograd.grad(nll, last, retain_graph=True)[0].float(), parts.world)
            g_gan = _mean_over_ranks(torch.autograd.grad(terms["gan"], last, retain_graph=True)[0].float(),
                                     parts.world)
            gan_weight = (g_nll.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach() * cfg.disc_weight
    vq_loss = cfg.codebook_weight * (terms["codebook"] + cfg.commitment_beta * terms["commitment"])
    loss = nll + gan_weight * terms["gan"] + vq_loss
    (loss / grad_accum).backward()
    metrics = {k: float(v.detach()) for k, v in terms.items()}
    metrics.update(loss=float(loss.detach()), nll=float(nll.detach()), gan_weight=float(gan_weight))
    return {"metrics": metrics, "fakes": fakes, "hist": hist, "latents": latents}


def discriminator_backward(parts: Parts, groups, fakes, micro_batch: int, grad_accum: int) -> float:
    """Forward + backward of the discriminator(s) on real frames against the detached reconstructions."""
    parts.disc2d.requires_grad_(True)
    if parts.disc3d is not None:
        parts.disc3d.requires_grad_(True)
    total = torch.zeros((), device=groups[0].pixels.device)
    for group, fake in zip(groups, fakes):
        share = group.pixels.shape[0] / micro_batch
        with parts.amp():
            real_logits = _disc_logits(parts, group.still, group.pixels)
            fake_logits = _disc_logits(parts, group.still, fake)
            total = total + share * discriminator_loss(real_logits.float(), fake_logits.float(),
                                                       parts.loss_cfg.gan_loss)
    (total / grad_accum).backward()
    return float(total.detach())
