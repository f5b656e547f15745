"""DPO entry point: the one training loop (`training/trainer.py`) with the DPO task (`dpo/task.py`).

    python -m megatron_emu3.dpo.train --config examples/recipes/tiny_dpo.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m megatron_emu3.dpo.train --config RECIPE parallel.tp=2

Everything a pretraining run has, a DPO run has: layouts, the distributed optimizer, bf16, resume
from ``RUN_DIR/checkpoints`` (the reference is rebuilt from the same source), interval, end and
SIGUSR1/SIGTERM saves, async saves, evaluation on held-out pairs (``train.eval_interval`` with
``dpo.valid_fraction`` > 0), ``COMPLETE``. ``data.global_batch_size`` / ``data.micro_batch_size``
count preference *pairs*; every pair needs ``data.seq_length + 1`` tokens or fewer.
"""

from __future__ import annotations

import sys

from megatron_emu3.config.loading import ConfigError
from megatron_emu3.config.schema import Config


def train_dpo(cfg: Config, env=None):
    """Run DPO to `train.iters` steps; returns (run, reference)."""
    from megatron_emu3.dpo.shards import PreferenceShard
    from megatron_emu3.dpo.task import DPOTask
    from megatron_emu3.training.trainer import train

    if not cfg.dpo.data:
        raise ConfigError("dpo.data is not set: give the preference shard prefix (tools/make_preferences.py)")
    if cfg.parallel.cp != 1:
        raise ConfigError(f"parallel.cp={cfg.parallel.cp}: DPO runs without context parallelism; use parallel.cp=1")
    if cfg.parallel.pp != 1:
        raise ConfigError(f"parallel.pp={cfg.parallel.pp}: DPO runs without pipeline parallelism (its frozen "
                          "reference would need a pipeline of its own); use parallel.pp=1 and tp/dp")
    PreferenceShard(cfg.dpo.data, cfg.model.vocab_size)  # validate before building anything
    run = train(cfg, env, make_task=DPOTask)
    return run, run.task.reference


def main(argv=None) -> int:
    from megatron_emu3.train import run_entry

    return run_entry("python -m megatron_emu3.dpo.train", __doc__, train_dpo, argv, dry_run=False)


if __name__ == "__main__":
    sys.exit(main())
