"""Training entry point.

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

from megatron_emu3.config.loading import ConfigError, resolve_config
from megatron_emu3.logs import configure_logging


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


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_emu3.parallel.setup import dist_env_from_environ

    configure_logging(dist_env_from_environ().rank)
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
