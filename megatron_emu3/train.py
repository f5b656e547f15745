"""Training entry point (pretraining, stage 1/2, QFT).

    python -m megatron_emu3.train --config examples/recipes/tiny.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m megatron_emu3.train --config RECIPE parallel.tp=2
    python -m megatron_emu3.train --config RECIPE --dry-run    # resolve + count, build nothing

Command-line contract (the launch scripts rely on it): run_dir=PATH, seed=N, train.iters=N,
parallel.tp/cp/pp=N (data parallel = world / (tp*cp*pp)), checkpoint.interval=N.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from megatron_emu3.config.loading import ConfigError, resolve_config
from megatron_emu3.logs import configure_logging


def parse_args(prog: str, doc: str, argv=None, dry_run: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=not dry_run, help="YAML recipe (examples/recipes/*.yaml)")
    if dry_run:
        parser.add_argument("--dry-run", action="store_true",
                            help="print the resolved config, parameter count and layout; build nothing")
        parser.add_argument("--world-size", type=int, default=None,
                            help="with --dry-run: the number of ranks to plan for (default: launch.nodes x gpus_per_node)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. parallel.tp=2 train.iters=10")
    return parser.parse_args(argv)


def run_entry(prog: str, doc: str, train_fn: Callable, argv=None, dry_run: bool = True) -> int:
    """Parse, resolve and validate the config, then `train_fn(cfg)`; bad input exits 2 with one line."""
    args = parse_args(prog, doc, argv, dry_run)
    from megatron_emu3.parallel.launcher import exit_with_launcher
    from megatron_emu3.parallel.env import dist_env_from_environ

    env = dist_env_from_environ()
    configure_logging(env.rank)
    exit_with_launcher()
    try:
        cfg = resolve_config(args.config, args.overrides)
        if getattr(args, "dry_run", False):
            from megatron_emu3.training.dry_run import dry_run as report

            print(report(cfg, args.world_size))
            return 0
        from megatron_emu3.config.validation import validate_config

        validate_config(cfg, env.world_size)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.run_lock import RunDirLockedError

    try:
        train_fn(cfg)
    except (ConfigError, FileNotFoundError, ValueError, RunDirLockedError) as err:
        # bad data or checkpoint paths, a busy run directory: say what and where; EMU3_DEBUG=1 keeps the traceback
        if os.environ.get("EMU3_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        # every way out, refusals included: process groups left to interpreter exit can abort it
        # ("terminate called without an active exception", exit -6 instead of 2)
        destroy_distributed()
    return 0


def _pretrain(cfg) -> None:
    from megatron_emu3.training.data_feed import check_sources

    check_sources(cfg)  # a wrong path or vocabulary fails before the model is built
    from megatron_emu3.training.trainer import train  # imported late: --dry-run builds nothing

    train(cfg)


def main(argv=None) -> int:
    return run_entry("python -m megatron_emu3.train", __doc__, _pretrain, argv)


if __name__ == "__main__":
    sys.exit(main())
