"""Print what the launch scripts need to know about a recipe, as shell assignments.

    python launch/slurm/run_info.py RECIPE [key=value ...]
    RUN_DIR=/abs/path/runs/emu3_8b_stage1
    TRAIN_ITERS=100000
    NODES=8
    GPUS_PER_NODE=8

The recipe is resolved exactly as the trainer resolves it (`megatron_emu3.config.loading`), so the
scripts never parse YAML themselves. A relative run_dir is made absolute against the current
directory (the scripts run the trainer from the repository root). Values are shell-quoted.
"""

from __future__ import annotations

import os
import shlex
import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    from megatron_emu3.config.loading import ConfigError, resolve_config

    try:
        cfg = resolve_config(argv[0], argv[1:])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    values = {
        "RUN_DIR": os.path.abspath(cfg.run_dir),
        "TRAIN_ITERS": cfg.train.iters,
        "NODES": cfg.launch.nodes,
        "GPUS_PER_NODE": cfg.launch.gpus_per_node,
    }
    for key, value in values.items():
        print(f"{key}={shlex.quote(str(value))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
