"""The VQ tokenizer training task's configuration: its own small dataclass tree.

Resolved like the LM trainer's (`megatron_emu3.config.loading`): defaults < YAML recipe (``base:``
chain) < ``section.key=value`` overrides; unknown keys and wrong types are errors naming the key.
`validate` checks what cannot run and says what to do. Manifest paths expand ``$VARS``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

from megatron_emu3.config.loading import ConfigError, resolve_dataclass

GAN_LOSSES = ("hinge", "non_saturating")
CLIP_DISCRIMINATORS = ("3d", "per_frame")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ModelConfig:
    """Which Emu3VQVAE to train: a `save_pretrained` directory, or a preset plus field overrides."""

    init_from: Optional[str] = None  # an Emu3VQVAE directory (released or ours); wins over preset
    preset: str = "tiny"  # "tiny" (~4M params, CPU tests) | "emu3" (the released architecture)
    codebook_size: Optional[int] = None  # None: the preset's (both presets: 32,768)
    embed_dim: Optional[int] = None
    latent_channels: Optional[int] = None
    base_channels: Optional[int] = None
    channel_multiplier: Optional[list] = None
    num_res_blocks: Optional[int] = None
    attn_resolutions: Optional[list] = None
    train_batchnorm: bool = False  # False: the temporal BatchNorm3d layers keep their running statistics


@dataclass
class DataConfig:
    """Manifests (the preprocessing format) and how samples are cut from them."""

    manifests: list = field(default_factory=list)  # JSONL/Parquet manifests with image/video rows
    eval_manifests: list = field(default_factory=list)  # the held-out set; empty: see holdout
    holdout: int = 8  # with no eval_manifests: the last N media rows of the training manifests, never trained on
    eval_items: int = 8  # at most this many held-out items are evaluated and drawn
    resolution: int = 256  # training crop size (square, a multiple of 8)
    eval_resolution: Optional[int] = None  # None: resolution
    short_side_scale: list = field(default_factory=lambda: [1.0, 1.0])  # short side resized to U(lo, hi)*resolution before cropping (never below resolution)
    clip_frames: int = 4  # frames per video clip (a multiple of 4)
    video_fps: float = 8.0
    video_max_seconds: float = 8.0  # decode at most this much of each video (clips start at random inside it)
    micro_batch_size: int = 4  # samples per rank per forward
    workers: int = 0  # DataLoader worker processes per rank


@dataclass
class LossConfig:
    """The objective: every term has its weight here."""

    l2_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_weights: Optional[str] = None  # VGG-16 + LPIPS lin layers (see megatron_emu3/vq/lpips.py); required when lpips_weight > 0
    codebook_weight: float = 1.0  # ||sg(z) - e||^2
    commitment_beta: float = 0.25  # beta * ||z - sg(e)||^2
    disc_weight: float = 0.8  # GAN weight (times the adaptive weight when adaptive_disc_weight)
    adaptive_disc_weight: bool = True  # taming-transformers: ||grad nll|| / ||grad gan|| at the decoder's last layer
    disc_start: int = 0  # the discriminator and the GAN term start at this optimizer step
    gan_loss: str = "hinge"  # hinge | non_saturating


@dataclass
class DiscConfig:
    """Patch-GAN discriminators: 2-D for images (and frames), 3-D for clips when clips='3d'."""

    clips: str = "3d"  # 3d | per_frame
    channels: int = 64
    layers: int = 3


@dataclass
class OptimConfig:
    """Adam for the generator and the discriminator, linear warm-up then constant or cosine."""

    lr: float = 1.0e-4
    disc_lr: Optional[float] = None  # None: lr
    betas: list = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (to min_lr at train.steps)
    min_lr: float = 0.0
    grad_clip: float = 1.0  # 0: off


@dataclass
class TrainConfig:
    steps: int = 1000
    grad_accum: int = 1
    seed: int = 1234
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    ema_decay: float = 0.0  # >0: keep an EMA of the generator; evaluation and the exported model use it
    log_interval: int = 10
    eval_interval: int = 0  # 0: evaluate only at the end
    usage_decay: float = 0.99  # EMA of per-step code hits (dead-code detection)
    dead_code_threshold: float = 0.01  # a code whose EMA hit count falls below this is dead
    dead_code_restart_interval: int = 0  # >0: every N steps dead codes restart from random encoder outputs


@dataclass
class CheckpointConfig:
    interval: int = 0  # 0: save only at the end (and on SIGUSR1/SIGTERM)
    keep_last: int = 2


@dataclass
class VQTrainConfig:
    run_dir: str = "runs/vq"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tensorboard: bool = False


def resolve(recipe: Optional[str] = None, overrides=()) -> VQTrainConfig:
    """Defaults < recipe < overrides, then `validate`."""
    cfg = resolve_dataclass(VQTrainConfig(), recipe, overrides)
    cfg.data.manifests = [os.path.expandvars(str(p)) for p in cfg.data.manifests]
    cfg.data.eval_manifests = [os.path.expandvars(str(p)) for p in cfg.data.eval_manifests]
    for section, key in ((cfg.loss, "lpips_weights"), (cfg.model, "init_from")):
        if getattr(section, key):
            setattr(section, key, os.path.expandvars(getattr(section, key)))
    validate(cfg)
    return cfg


def validate(cfg: VQTrainConfig) -> None:
    d, loss, t = cfg.data, cfg.loss, cfg.train
    if not d.manifests:
        raise ConfigError("data.manifests is empty: give the JSONL/Parquet manifests to train on "
                          "(data.manifests=[a.jsonl,b.jsonl])")
    for path in d.manifests + d.eval_manifests + [loss.lpips_weights or "", cfg.model.init_from or ""]:
        if "$" in path:
            raise ConfigError(f"path {path!r} names an unset environment variable; export it or override "
                              "the key (data.manifests, data.eval_manifests, loss.lpips_weights, model.init_from)")
    if d.resolution <= 0 or d.resolution % 8 or (d.eval_resolution or 8) % 8:
        raise ConfigError(f"data.resolution={d.resolution} / eval_resolution={d.eval_resolution} must be "
                          "positive multiples of 8")
    if d.clip_frames <= 0 or d.clip_frames % 4:
        raise ConfigError(f"data.clip_frames={d.clip_frames} must be a positive multiple of 4")
    if len(d.short_side_scale) != 2 or not 1.0 <= d.short_side_scale[0] <= d.short_side_scale[1]:
        raise ConfigError(f"data.short_side_scale={d.short_side_scale} must be [lo, hi] with 1 <= lo <= hi")
    if d.micro_batch_size <= 0 or t.grad_accum <= 0 or t.steps <= 0:
        raise ConfigError("data.micro_batch_size, train.grad_accum and train.steps must be positive")
    if loss.gan_loss not in GAN_LOSSES:
        raise ConfigError(f"loss.gan_loss={loss.gan_loss!r}; choose one of {GAN_LOSSES}")
    if cfg.disc.clips not in CLIP_DISCRIMINATORS:
        raise ConfigError(f"disc.clips={cfg.disc.clips!r}; choose one of {CLIP_DISCRIMINATORS}")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision={t.precision!r}; choose one of {PRECISIONS}")
    if cfg.optim.schedule not in ("constant", "cosine"):
        raise ConfigError(f"optim.schedule={cfg.optim.schedule!r}; choose constant or cosine")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={t.ema_decay} must be in [0, 1)")
    if loss.lpips_weight > 0 and not loss.lpips_weights:
        raise ConfigError(
            "loss.lpips_weight > 0 needs loss.lpips_weights: a local file or directory with the VGG-16 "
            "features and the LPIPS lin layers (nothing is downloaded; see docs/vq_training.md), or set "
            "loss.lpips_weight=0 to train without the perceptual term")
    if loss.lpips_weights and not os.path.exists(loss.lpips_weights):
        raise ConfigError(f"loss.lpips_weights={loss.lpips_weights} does not exist")
    if cfg.model.init_from and not os.path.isfile(os.path.join(cfg.model.init_from, "config.json")):
        raise ConfigError(f"model.init_from={cfg.model.init_from} has no config.json; point it at an "
                          "Emu3VQVAE directory (save_pretrained)")


def to_dict(cfg: VQTrainConfig) -> dict:
    return dataclasses.asdict(cfg)
