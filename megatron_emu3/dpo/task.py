"""DPO as a task of the one training loop: preference pairs, a frozen reference, the DPO + SFT loss.

The policy is the run's model (any TP/DP layout, distributed optimizer, bf16); the reference is a
second `GPTModel` of the same layout, frozen in eval mode, holding the starting weights
(``checkpoint.load_weights_from`` when set, else the policy's initialisation). Records are split
once into training and held-out pairs (``dpo.valid_fraction``, seeded by ``data.split_seed``);
training pairs are visited in a seeded order reshuffled per epoch, and every evaluation scores the
same held-out pairs (reward margin, accuracy of chosen over rejected, losses).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch

from megatron_emu3.checkpoint.state import load_model_weights
from megatron_emu3.config.schema import Config
from megatron_emu3.data.sampler import BatchSampler
from megatron_emu3.dpo.batches import preference_batch
from megatron_emu3.dpo.loss import DPO_STAT_KEYS, dpo_metrics, dpo_sums, stack_dpo_sums
from megatron_emu3.dpo.shards import PreferenceShard
from megatron_emu3.model.build import build_model, unwrap
from megatron_emu3.parallel.ddp import frozen_copy
from megatron_emu3.training.pretrain import forward_ce

logger = logging.getLogger("megatron_emu3.dpo")


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_records)


def record_order(num_records: int, seed: int, start: int, count: int) -> list[int]:
    """Record indices for global positions start..start+count: a seeded permutation per epoch."""
    return [int(_epoch_permutation(num_records, seed, p // num_records)[p % num_records])
            for p in range(start, start + count)]


def split_records(num_records: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) record indices: a seeded permutation, the last `valid_fraction` held out."""
    order = np.random.default_rng([seed, 7]).permutation(num_records)
    held_out = int(round(num_records * valid_fraction))
    return np.sort(order[:num_records - held_out]), np.sort(order[num_records - held_out:])


def build_reference(cfg: Config, policy) -> torch.nn.Module:
    """A frozen copy of `policy`'s current weights (same layout and precision), in eval mode."""
    gpt = build_model(cfg)
    source = dict(unwrap(policy).named_parameters())
    with torch.no_grad():
        for name, param in gpt.named_parameters():
            param.copy_(source[name].detach())
    return frozen_copy(cfg, gpt)


class DPOTask:
    """DPO loss plus ``dpo.sft_weight`` x next-token loss on the chosen completions."""

    name = "dpo"
    stat_keys = DPO_STAT_KEYS

    def __init__(self, run):
        cfg, ctx = run.cfg, run.ctx
        self.cfg, self.ctx, self.input_format = cfg, ctx, run.choice.input_format
        self.shard = PreferenceShard(cfg.dpo.data, cfg.model.vocab_size)
        self.train_ids, self.valid_ids = split_records(len(self.shard), cfg.dpo.valid_fraction, cfg.data.split_seed)
        if len(self.train_ids) == 0:
            raise ValueError(f"{cfg.dpo.data}: dpo.valid_fraction={cfg.dpo.valid_fraction} holds out all "
                             f"{len(self.shard)} records; lower it")
        self.reference = build_reference(cfg, run.model)
        if cfg.checkpoint.load_weights_from:
            load_model_weights(unwrap(self.reference), cfg.checkpoint.load_weights_from, cfg.model.vocab_size)
        d = cfg.data
        self.sampler = BatchSampler(None, d.micro_batch_size, d.global_batch_size, ctx.dp_rank, ctx.dp_size)
        logger.info("DPO on %d preference pairs (%d held out) from %s, beta %g, sft weight %g", len(self.train_ids),
                    len(self.valid_ids), cfg.dpo.data, cfg.dpo.beta, cfg.dpo.sft_weight)

    def _batches(self, records: Sequence[Sequence[int]]) -> list[dict[str, torch.Tensor]]:
        return [preference_batch([self.shard[r] for r in micro], self.cfg.data.seq_length, self.ctx.device,
                                 [f"{self.shard.prefix} record {r}" for r in micro]) for micro in records]

    def train_batches(self, consumed: int) -> list[dict[str, torch.Tensor]]:
        micro = self.sampler.micro_batches(consumed)
        positions = record_order(len(self.train_ids), self.cfg.seed, micro[0][0], sum(len(m) for m in micro))
        it = iter(positions)
        return self._batches([[int(self.train_ids[next(it)]) for _ in m] for m in micro])

    def eval_batches(self, evaluation: int, index: int) -> Optional[list[dict[str, torch.Tensor]]]:
        if len(self.valid_ids) == 0:
            return None
        micro = self.sampler.micro_batches(index * self.cfg.data.global_batch_size)  # the same pairs every time
        return self._batches([[int(self.valid_ids[p % len(self.valid_ids)]) for p in m] for m in micro])

    def normalisers(self, micro_batches) -> torch.Tensor:
        counts = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        for mb in micro_batches:
            pairs = mb["tokens"].shape[0] // 2
            counts[0] += pairs
            counts[1] += mb["loss_weights"][:pairs].double().sum()
        return counts

    def check_normalisers(self, total: torch.Tensor) -> None:
        if total[1].item() <= 0:
            raise RuntimeError("the global batch has no chosen completion token; check the preference set")

    def forward(self, model, batch) -> tuple[torch.Tensor, Any]:
        with torch.no_grad():
            ref_ce = forward_ce(self.reference, batch, self.input_format)
        return forward_ce(model, batch, self.input_format), ref_ce

    def loss(self, batch, output, ref_ce, normalisers) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = batch["tokens"].shape[0] // 2
        sums = dpo_sums(output, ref_ce, batch["loss_weights"], pairs, self.cfg.dpo.beta)
        share = sums["dpo_sum"] / normalisers[0] + self.cfg.dpo.sft_weight * sums["sft_sum"] / normalisers[1]
        return share.float(), stack_dpo_sums(sums)

    def metrics(self, total: torch.Tensor) -> dict:
        return dpo_metrics(total, self.cfg.dpo.sft_weight)

    def launch_metrics(self) -> dict:
        return {"dpo_train_pairs": len(self.train_ids), "dpo_valid_pairs": len(self.valid_ids)}

    def throughput(self, step_time_s: float, world_size: int) -> dict:
        return {"pairs_per_s": self.cfg.data.global_batch_size / step_time_s}
