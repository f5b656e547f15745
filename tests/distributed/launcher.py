"""Run a function on N real gloo ranks (spawned processes) and collect each rank's return value.

Every multi-process run has a timeout (a hung collective must fail the test, not the suite).
"""

from __future__ import annotations

import io
import os
import queue
import socket
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn, args, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # torch is already imported here: the env var alone comes too late
    try:
        buffer = io.BytesIO()  # tensors through a Queue share fds that die with the child: send bytes
        torch.save(fn(*args), buffer)
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # report everything to the parent, which raises
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(world_size: int, fn, *args, timeout: float = 300.0) -> list:
    """Call `fn(*args)` on `world_size` spawned ranks; returns the results ordered by rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, results)) for r in range(world_size)]
    for p in procs:
        p.start()
    collected: dict[int, object] = {}
    errors = []
    try:
        for _ in range(world_size):
            rank, status, value = results.get(timeout=timeout)
            if status == "error":
                errors.append(f"rank {rank} failed:\n{value}")
                break
            collected[rank] = torch.load(io.BytesIO(value), weights_only=False)
    except queue.Empty:
        errors.append(f"timed out after {timeout:.0f}s waiting for ranks {sorted(set(range(world_size)) - set(collected))}")
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [collected[r] for r in range(world_size)]
