"""Train Emu3's vision tokenizer (transformers' `Emu3VQVAE`) on image/video manifests.

    python -m megatron_emu3.vq.train --config examples/recipes/tiny_vq.yaml [key=value ...]
    torchrun --nproc-per-node 8 -m megatron_emu3.vq.train --config examples/recipes/vq_emu3.yaml
    python -m megatron_emu3.vq.train --config RECIPE --print-run-info   # RUN_DIR=... TRAIN_STEPS=...

Data parallel: every rank holds the whole model; gradients are averaged over ranks (one flat
all-reduce per model and step) before clipping and Adam, so all ranks stay identical and DP=N equals
one rank with N times the micro-batch. bf16 autocast on GPU. The run directory gets config.yaml,
metrics.jsonl (+ tensorboard/), checkpoints/, eval/step_NNNNNNN/ (reconstruction grids), and at the
end vq/ (save_pretrained; EMA weights when train.ema_decay > 0) and COMPLETE.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from megatron_emu3.checkpoint.signals import StopFlag
from megatron_emu3.config.loading import ConfigError
from megatron_emu3.logs import configure_logging
from megatron_emu3.parallel.setup import dist_env_from_environ
from megatron_emu3.training.metrics import MetricsWriter
from megatron_emu3.vq import checkpointing, config as vq_config, data, quality
from megatron_emu3.vq.discriminator import PatchDiscriminator
from megatron_emu3.vq.model import (EMA, CodebookUsage, build_model, fresh_codes, perplexity, restart_codes,
                                    set_train_mode)
from megatron_emu3.vq.objective import Parts, discriminator_backward, generator_backward

logger = logging.getLogger("megatron_emu3.vq.train")


def learning_rate(base: float, step: int, optim, total_steps: int) -> float:
    """Linear warm-up over optim.warmup_steps, then constant or cosine to optim.min_lr."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return base * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return base
    total = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / total)
    return optim.min_lr + 0.5 * (base - optim.min_lr) * (1 + math.cos(math.pi * progress))


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Mean of the gradients over ranks, one flat all-reduce (every parameter always has a .grad)."""
    if world == 1 or not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _zero_grads(params) -> None:
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            p.grad.zero_()


class Run:
    """Everything a VQ training run holds, built from its config on one rank."""

    def __init__(self, cfg, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model).to(device)
        self.disc2d = PatchDiscriminator(2, cfg.disc.channels, cfg.disc.layers).to(device)
        self.disc3d = PatchDiscriminator(3, cfg.disc.channels, cfg.disc.layers).to(device) \
            if cfg.disc.clips == "3d" else None
        self.lpips = None
        if cfg.loss.lpips_weights:  # also scores the held-out set when lpips_weight is 0
            from megatron_emu3.vq.lpips import load_lpips

            self.lpips = load_lpips(cfg.loss.lpips_weights, device)
        o = cfg.optim
        self.gen_params = [p for p in self.model.parameters()]
        self.disc_params = list(self.disc2d.parameters()) + (list(self.disc3d.parameters()) if self.disc3d else [])
        for params in (self.gen_params, self.disc_params):
            _zero_grads(params)
        self.opt_g = torch.optim.Adam(self.gen_params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.opt_d = torch.optim.Adam(self.disc_params, lr=o.disc_lr or o.lr, betas=tuple(o.betas),
                                      weight_decay=o.weight_decay)
        self.ema = EMA(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.usage = CodebookUsage(self.model.config.codebook_size, cfg.train.usage_decay,
                                   cfg.train.dead_code_threshold)
        self.restart_rng = torch.Generator().manual_seed(cfg.train.seed + 17)
        if cfg.model.train_batchnorm and world > 1:
            if device.type != "cuda":
                raise ConfigError("model.train_batchnorm=true with several ranks needs SyncBatchNorm (GPU only); "
                                  "on CPU keep it false")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
        self.amp_dtype = torch.bfloat16 if use_bf16 else None
        autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16) if use_bf16 else None
        self.parts = Parts(self.model, self.disc2d, self.disc3d, self.lpips, cfg.loss, world, autocast)

    def state_dict(self, step: int) -> dict:
        return {"step": step, "model": self.model.state_dict(), "disc2d": self.disc2d.state_dict(),
                "disc3d": self.disc3d.state_dict() if self.disc3d else None,
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "usage": self.usage.state_dict(),
                "restart_rng": self.restart_rng.get_state(), "rng": checkpointing.rng_state(),
                "config": vq_config.to_dict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.disc2d.load_state_dict(state["disc2d"])
        if self.disc3d is not None:
            self.disc3d.load_state_dict(state["disc3d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError("train.ema_decay > 0 but the checkpoint has no EMA; keep the setting of the run")
            self.ema.load_state_dict(state["ema"])
        self.usage.load_state_dict(state["usage"])
        self.restart_rng.set_state(state["restart_rng"])
        checkpointing.set_rng_state(state["rng"])

    def inference_model(self):
        """The model to evaluate and export: the EMA copy when enabled, in eval mode."""
        model = self.ema.copy_of(self.model) if self.ema else self.model
        return model.eval()


def train_step(run: Run, step: int, batches, skipped_total: Counter) -> dict:
    cfg = run.cfg
    mb, accum = cfg.data.micro_batch_size, cfg.train.grad_accum
    gan_active = step >= cfg.loss.disc_start and cfg.loss.disc_weight > 0
    set_train_mode(run.model, cfg.model.train_batchnorm)
    _zero_grads(run.gen_params)
    _zero_grads(run.disc_params)
    sums, hist, latents, d_loss = Counter(), None, None, 0.0
    for groups, skipped in batches:
        for msg in skipped:
            if skipped_total[msg] == 0:
                logger.warning("rank %d: media skipped and replaced: %s", run.rank, msg)
            skipped_total[msg] += 1
        groups = [data.Group(g.pixels.to(run.device, non_blocking=True), g.still) for g in groups]
        out = generator_backward(run.parts, groups, mb, accum, gan_active)
        for key, value in out["metrics"].items():
            sums[key] += value / accum
        hist = out["hist"] if hist is None else hist + out["hist"]
        latents = out["latents"]
        if gan_active:
            d_loss += discriminator_backward(run.parts, groups, out["fakes"], mb, accum) / accum
    lr_g = learning_rate(cfg.optim.lr, step, cfg.optim, cfg.train.steps)
    for group in run.opt_g.param_groups:
        group["lr"] = lr_g
    average_gradients(run.gen_params, run.world)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.gen_params, cfg.optim.grad_clip or float("inf"))
    run.opt_g.step()
    record = {f"train/{k}": v for k, v in sums.items()}
    if gan_active:
        lr_d = learning_rate(cfg.optim.disc_lr or cfg.optim.lr, step, cfg.optim, cfg.train.steps)
        for group in run.opt_d.param_groups:
            group["lr"] = lr_d
        average_gradients(run.disc_params, run.world)
        torch.nn.utils.clip_grad_norm_(run.disc_params, cfg.optim.grad_clip or float("inf"))
        run.opt_d.step()
        record["train/disc_loss"] = d_loss
    if run.ema is not None:
        run.ema.update(run.model)
    if run.world > 1:
        dist.all_reduce(hist)
        losses = torch.tensor([record[k] for k in sorted(record)], dtype=torch.float64, device=run.device)
        dist.all_reduce(losses)
        record.update({k: float(v) / run.world for k, v in zip(sorted(record), losses.cpu())})
    run.usage.update(hist)
    dead = run.usage.dead()
    restarted = 0
    every = cfg.train.dead_code_restart_interval
    if every and (step + 1) % every == 0 and dead.numel():
        fresh = fresh_codes(int(dead.numel()), latents, run.restart_rng).to(run.device)
        if run.world > 1:  # rank 0's choice for everyone
            dist.broadcast(fresh, 0)
        restart_codes(run.model, dead, fresh)
        if run.ema is not None:  # the averaged codebook moves too, or it would keep the dead vectors
            codebook = run.ema.shadow["quantize.embedding.weight"]
            codebook[dead.to(codebook.device)] = fresh.to(codebook.device, codebook.dtype)
        run.usage.ema[dead] = run.usage.threshold
        restarted = int(dead.numel())
    record.update({"loss": record["train/loss"], "lr": lr_g, "grad_norm": float(grad_norm),
                   "codebook/perplexity": perplexity(hist), "codebook/codes_in_step": int((hist > 0).sum()),
                   "codebook/dead_codes": int(dead.numel()), "codebook/restarted": restarted,
                   "gan_active": gan_active})
    return record


def evaluate(run: Run, samples: list[dict], out_dir: Path) -> dict:
    """Reconstruct the held-out set: metrics over it, grids written to out_dir."""
    model = run.inference_model()
    results, hist = [], None
    for s in samples:
        r, h = quality.reconstruct(model, s["pixels"][None], s["still"], run.lpips, run.amp_dtype)
        results += r
        hist = h if hist is None else hist + h
    summary = quality.summarize(results, hist)
    quality.save_grids(results, out_dir, run.cfg.data.video_fps)
    return summary


def run_eval(run: Run, samples: list[dict], run_dir: Path, metrics: MetricsWriter, step: int) -> None:
    summary = evaluate(run, samples, run_dir / "eval" / f"step_{step:07d}")
    metrics.write({"step": step, **{f"eval/{k}": v for k, v in summary.items()}})
    logger.info("eval at step %d: %s", step, "  ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))


def export(run: Run, run_dir: Path) -> Path:
    """RUN_DIR/vq: a save_pretrained Emu3VQVAE (what preprocessing, inspection and the HF export load)."""
    model = run.inference_model()
    out = run_dir / "vq"
    tmp = run_dir / "vq.partial"
    model.to("cpu").save_pretrained(str(tmp))
    model.to(run.device)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def train(cfg) -> int:
    env = dist_env_from_environ()
    rank, world = env.rank, env.world_size
    on_gpu = torch.cuda.is_available()
    device = torch.device(f"cuda:{env.local_rank}" if on_gpu else "cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("nccl" if on_gpu else "gloo", rank=rank, world_size=world)
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "config.yaml", "w") as f:
            yaml.safe_dump(vq_config.to_dict(cfg), f, sort_keys=False)
    items, left_out = data.read_items(cfg.data.manifests)
    if cfg.data.eval_manifests:
        eval_items, eval_left_out = data.read_items(cfg.data.eval_manifests)
        train_items = items
    else:
        train_items, eval_items = data.split_holdout(items, cfg.data.holdout)
    logger.info("%d training media (%s), %d held out", len(train_items),
                ", ".join(f"{v} {k}" for k, v in left_out.items()) or "nothing left out", len(eval_items))
    run = Run(cfg, rank, world, device)
    ckpt_dir = run_dir / "checkpoints"
    start = 0
    resumed = checkpointing.load_latest(ckpt_dir)
    if resumed is not None:
        start, state = resumed
        run.load_state_dict(state)
        logger.info("resumed from %s at step %d", ckpt_dir, start)
    eval_set, eval_skipped = data.eval_samples(eval_items, cfg.data, cfg.data.eval_items) if rank == 0 else ([], [])
    for msg in eval_skipped:
        logger.warning("held-out media skipped: %s", msg)
    metrics = MetricsWriter(str(run_dir), enabled=rank == 0, tensorboard=cfg.tensorboard)
    stop = StopFlag().install()
    dataset = data.TrainSamples(train_items, cfg.data, cfg.train.seed)
    sampler = data.StepSampler(start, cfg.train.steps, rank, world, cfg.data.micro_batch_size, cfg.train.grad_accum)
    batches = iter(data.train_loader(dataset, sampler, cfg.data.workers))
    skipped_total: Counter = Counter()
    step = start
    try:
        if start == 0 and rank == 0 and eval_set:  # the baseline the run's progress is measured against
            run_eval(run, eval_set, run_dir, metrics, 0)
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            micro = [next(batches) for _ in range(cfg.train.grad_accum)]
            record = train_step(run, step, micro, skipped_total)
            step += 1
            record.update(step=step, step_time_s=time.perf_counter() - t0,
                          skipped_media=sum(skipped_total.values()))
            if step % cfg.train.log_interval == 0 or step == cfg.train.steps or step == start + 1:
                metrics.write(record)
            evaluate_now = (cfg.train.eval_interval and step % cfg.train.eval_interval == 0) or step == cfg.train.steps
            if evaluate_now and rank == 0 and eval_set:
                run_eval(run, eval_set, run_dir, metrics, step)
            stopping = stop.agreed(device)
            interval = cfg.checkpoint.interval
            if stopping or step == cfg.train.steps or (interval and step % interval == 0):
                checkpointing.save(ckpt_dir, step, run.state_dict(step), rank, cfg.checkpoint.keep_last)
            if stopping:
                logger.warning("stopped by signal at step %d (checkpoint saved); relaunch to resume", step)
                return 0
        if rank == 0:
            out = export(run, run_dir)
            (run_dir / "COMPLETE").write_text(f"{step}\n")
            logger.info("training complete at step %d; tokenizer saved to %s", step, out)
    finally:
        stop.uninstall()
        metrics.close()
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megatron_emu3.vq.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (examples/recipes/*vq*.yaml)")
    parser.add_argument("--print-run-info", action="store_true",
                        help="print RUN_DIR=... TRAIN_STEPS=... for launch scripts and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(dist_env_from_environ().rank)
    try:
        cfg = vq_config.resolve(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_run_info:
        import shlex

        print(f"RUN_DIR={shlex.quote(str(Path(cfg.run_dir).resolve()))}\nTRAIN_STEPS={cfg.train.steps}")
        return 0
    try:
        return train(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if os.environ.get("EMU3_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
