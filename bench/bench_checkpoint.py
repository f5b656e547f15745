"""Time saving and loading a checkpoint (torch_dist) of a model configuration, on 1 process.

    python bench/bench_checkpoint.py [--preset tiny] [overrides ...]

Prints save and load seconds and the checkpoint size. Not a test. With `checkpoint.async_save=true`
the save goes through the trainer's `AsyncSaver`: the row gives the time until the checkpoint is
published and, in parentheses, the part that blocks training (staging to host memory).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from megatron_emu3.checkpoint.state import AsyncSaver, load_checkpoint, save_checkpoint
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.training.pretrain import PretrainTask
    from megatron_emu3.training.trainer import build_run, train_one_step

    root = Path(tempfile.mkdtemp(prefix="emu3-ckpt-bench-"))
    cfg = resolve_config(None, [f"preset={args.preset}", f"run_dir={root}", "checkpoint.keep_last=1", *args.overrides])
    run = build_run(cfg)
    train_one_step(run, PretrainTask(cfg, run.ctx, run.choice.input_format))  # the optimizer state exists after a step
    params = sum(p.numel() for p in run.model.parameters())
    saver = AsyncSaver() if cfg.checkpoint.async_save else None
    saves, blocking, loads = [], [], []
    for i in range(args.repeat):
        run.state.step = i + 1
        start = time.perf_counter()
        if saver is None:
            path = save_checkpoint(run.checkpoint_parts(), root / "checkpoints", cfg)
        else:
            saver.save(run.checkpoint_parts(), root / "checkpoints", cfg)
            blocking.append(time.perf_counter() - start)
            saver.wait()  # published: renamed from .partial, `latest` moved
            path = saver.published[-1]
        saves.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_checkpoint(run.checkpoint_parts(), path)
        loads.append(time.perf_counter() - start)
    if saver is not None:
        saver.close()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    save = (f"save {min(saves):.2f} s" if saver is None else
            f"async save {min(saves):.2f} s ({min(blocking):.2f} s blocking)")
    print(f"| {args.preset} | {params:,} | {size / 2**20:.1f} MiB | {save} | load {min(loads):.2f} s |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
