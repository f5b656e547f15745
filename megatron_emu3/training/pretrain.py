"""The pretraining task (stage 1, stage 2, QFT): next-token prediction on packed samples.

Loss ``sum(w * CE) / sum(w)`` over the global batch (`training/loss.py`); the data comes from
`data.source` (synthetic or preprocessed shards), read by `data/sampler.py` from the consumed-samples
position and laid out for the model's attention backend (`batch/layout.py`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from megatron_emu3.batch.inputs import model_inputs
from megatron_emu3.batch.layout import rank_micro_batch
from megatron_emu3.config.schema import Config
from megatron_emu3.data.sampler import BatchSampler
from megatron_emu3.parallel.context import ParallelContext
from megatron_emu3.parallel.planner import model_flops_per_token
from megatron_emu3.training.data_feed import build_datasets
from megatron_emu3.training.loss import STAT_KEYS, global_loss, loss_sums, stack_sums


def forward_ce(model, batch: dict[str, torch.Tensor], input_format: str) -> torch.Tensor:
    """Per-token cross-entropy (fp32, the shape of the batch's labels) of one micro-batch."""
    ce = model(**model_inputs(batch, input_format))
    return ce.float().reshape(batch["labels"].shape)


class BatchReader:
    """This rank's micro-batches of a dataset, laid out for one attention backend."""

    def __init__(self, cfg: Config, ctx: ParallelContext, input_format: str):
        self.cfg, self.ctx, self.input_format = cfg, ctx, input_format
        self.tp_for_sp = cfg.parallel.tp if cfg.parallel.sequence_parallel else 1

    def read(self, dataset, sampler: BatchSampler, consumed: int) -> list[dict[str, torch.Tensor]]:
        return [rank_micro_batch([dataset[i] for i in micro], self.input_format, self.ctx.device,
                                 self.ctx.cp_size, self.ctx.cp_rank, self.tp_for_sp)
                for micro in sampler.micro_batches(consumed)]

    def sampler(self, dataset) -> BatchSampler:
        d = self.cfg.data
        return BatchSampler(len(dataset), d.micro_batch_size, d.global_batch_size, self.ctx.dp_rank,
                            self.ctx.dp_size)


class PretrainTask:
    """Next-token prediction with per-token loss weights (text 1, vision codes 0.5, QFT vision only)."""

    name = "pretraining"
    stat_keys = STAT_KEYS

    def __init__(self, cfg: Config, ctx: ParallelContext, input_format: str):
        self.cfg, self.input_format = cfg, input_format
        self.reader = BatchReader(cfg, ctx, input_format)
        self.train_set, self.valid_set = build_datasets(cfg)
        self.train_sampler = self.reader.sampler(self.train_set)
        self.valid_sampler = self.reader.sampler(self.valid_set) if self.valid_set is not None else None

    def train_batches(self, consumed: int) -> list[dict[str, torch.Tensor]]:
        return self.reader.read(self.train_set, self.train_sampler, consumed)

    def eval_batches(self, evaluation: int, index: int) -> Optional[list[dict[str, torch.Tensor]]]:
        if self.valid_sampler is None:
            return None
        gbs = self.cfg.data.global_batch_size
        start = (evaluation * self.cfg.train.eval_iters + index) * gbs  # evaluation k reads its own samples
        return self.reader.read(self.valid_set, self.valid_sampler, start)

    def normalisers(self, micro_batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        return sum(mb["loss_weights"].double().sum() for mb in micro_batches).reshape(1)

    def check_normalisers(self, total: torch.Tensor) -> None:
        if total[0].item() <= 0:
            raise RuntimeError("the global batch has no token with loss weight > 0; check data.loss_policy and "
                               "the data (QFT needs image/video generation documents)")

    def forward(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        return model(**model_inputs(batch, self.input_format)), None

    def loss(self, batch, output, extra, normalisers) -> tuple[torch.Tensor, torch.Tensor]:
        sums = loss_sums(output.float().reshape(batch["labels"].shape), batch["labels"], batch["loss_weights"])
        return (sums["weighted_ce"] / normalisers[0]).float(), stack_sums(sums)

    def metrics(self, total: torch.Tensor) -> dict:
        return global_loss(total)

    def launch_metrics(self) -> dict:
        """Shard datasets: the vision documents left out as too long for a sample, per source."""
        info = getattr(self.train_set, "info", None)
        if not info:
            return {}
        from megatron_emu3.data.dataset import data_metrics

        return data_metrics(info)

    def throughput(self, step_time_s: float, world_size: int) -> dict:
        tokens = self.cfg.data.global_batch_size * self.cfg.data.seq_length
        # Model FLOPs (parallel/planner.py: causal attention counted as half over the whole sample, as
        # Megatron-LM counts it) per second and per rank, the figure clusters are compared on.
        tflops = model_flops_per_token(self.cfg) * tokens / step_time_s / world_size / 1e12
        return {"tokens_per_s": tokens / step_time_s, "tflops_per_gpu": tflops}
