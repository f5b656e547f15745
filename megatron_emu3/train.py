"""Training entry point.

    python -m megatron_emu3.train --config examples/recipes/tiny.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m megatron_emu3.train --config RECIPE parallel.tp=2
    python -m megatron_emu3.train --config RECIPE --dry-run    # resolve + count, build nothing

Command-line contract (the launch scripts rely on it): run_dir=PATH, seed=N, train.iters=N,
parallel.tp/cp/pp=N (data parallel = world / (tp*cp*pp)), checkpoint.interval=N.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from megatron_emu3.config.loading import ConfigError, resolve_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megatron_emu3.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (examples/recipes/*.yaml)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, parameter count and layout; build nothing")
    parser.add_argument("--world-size", type=int, default=None,
                        help="with --dry-run: the number of ranks to plan for (default: launch.nodes x gpus_per_node)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. parallel.tp=2 train.iters=10")
    return parser.parse_args(argv)


LIBRARY_NOISE = ("Transformer Engine and Apex are not installed", "Apex is not installed")


def _quiet_library_noise() -> None:
    # also for the helper processes megatron-core starts (checkpoint writers): they read the env
    os.environ["PYTHONWARNINGS"] = ",".join(f"ignore:{m}:UserWarning" for m in LIBRARY_NOISE)
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="megatron.core")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron.core").setLevel(logging.WARNING)
    logging.getLogger("megatron.core.rerun_state_machine").setLevel(logging.ERROR)  # "implicit init" notice
    from megatron_emu3.parallel.setup import dist_env_from_environ

    if dist_env_from_environ().rank != 0:  # rank 0 logs; other ranks their place in the job, then warnings
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("megatron_emu3.parallel.setup").setLevel(logging.INFO)
    _quiet_library_noise()
    try:
        cfg = resolve_config(args.config, args.overrides)
        if args.dry_run:
            from megatron_emu3.training.dry_run import dry_run

            print(dry_run(cfg, args.world_size))
            return 0
        from megatron_emu3.config.validation import validate_config

        validate_config(cfg, dist_env_from_environ().world_size)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from megatron_emu3.training.trainer import train

    try:
        train(cfg)
    except (FileNotFoundError, ValueError) as err:
        # bad data or checkpoint paths: say what and where; EMU3_DEBUG=1 keeps the traceback
        if os.environ.get("EMU3_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
