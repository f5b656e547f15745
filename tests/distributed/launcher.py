"""Run a function on N real gloo ranks and collect each rank's return value.

The ranks are processes kept alive between calls (one pool per world size and environment, up to 7
ranks in all while memory allows): importing torch and megatron-core costs seconds per process on a
small machine, and most scenarios are short. They are forked from a forkserver that has imported
torch, megatron-core and the trainer once (a fresh interpreter without threads or process groups),
so a new rank starts in a fraction of a second and shares those pages. A pool with an environment of
its own is spawned instead (megatron-core reads some variables at import), and so is every pool on a
machine with CUDA (a process forked after the CUDA driver started cannot use it). Every
call gets a fresh rendezvous port and a fresh process group; a scenario must leave no global state
behind (`destroy_distributed` is called for it when it forgets; a process group that outlives the
task, with its polling threads, fails the call). A failed or timed-out call kills its
pool (a rank may be stuck in a collective); the next call spawns a new one. Every call has a timeout:
a hung collective must fail the test, not the suite.
"""

from __future__ import annotations

import atexit
import io
import os
import queue
import random
import socket
import traceback

import torch
import torch.multiprocessing as mp

from megatron_emu3.parallel.launcher import die_with_parent


def free_port() -> int:
    """A free port below the kernel's ephemeral range (where outgoing connections of other tests take
    theirs), from a range of its own per pytest-xdist worker, so concurrent launches do not collide."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = 10_000 + 2_500 * (index % 4)  # (launch/slurm uses 20000 + job id)
    for _ in range(200):
        port = random.randrange(low, low + 2_500)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{low + 2_500}")


def _worker(rank: int, world_size: int, tasks, results, env: dict[str, str]) -> None:
    die_with_parent()  # the pytest worker
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      **env)  # before a task's unpickling imports megatron-core
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # torch is already imported here: the env var alone comes too late
    while True:
        task = tasks.get()
        if task is None:
            return
        port, fn, args = task
        os.environ["MASTER_PORT"] = str(port)
        try:
            buffer = io.BytesIO()  # tensors through a Queue share fds that die with the child: send bytes
            torch.save(fn(*args), buffer)
            status, value = "ok", buffer.getvalue()
        except BaseException:  # report everything to the parent, which raises
            status, value = "error", traceback.format_exc()
        _reset_distributed()
        if status == "ok" and (leaked := _gloo_threads()):
            status, value = "error", (f"{leaked} gloo threads outlived the process groups of {fn.__name__}: "
                                      "something still references a group (see parallel/setup.py destroy_distributed)")
        results.put((rank, status, value))


def _gloo_threads() -> int:
    """Threads of this process that belong to a gloo process group (transport loops, runners)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += "gloo" in f.read()
        except OSError:  # the thread ended meanwhile
            continue
    return count


def _reset_distributed() -> None:
    from megatron_emu3.parallel.setup import destroy_distributed

    try:
        destroy_distributed()
    except Exception:  # noqa: BLE001 - best effort: the next task initialises afresh
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# Imported once by the forkserver, before any rank is forked. None of it may read a pool's `env`
# at import: pools with an `env` are spawned (megatron_emu3/mcore_jit.py reads
# EMU3_COMPILE_FUSIONS_ON_CPU when megatron-core's jit module loads).
FORKSERVER_PRELOAD = ["torch", "megatron_emu3.training.trainer", "tests.distributed.launcher"]


def _context(env: dict[str, str]):
    # With CUDA, spawn: the forkserver's import of megatron-core asks torch.cuda.is_available(), which
    # initialises the CUDA driver, and a process forked after that cannot use CUDA.
    if env or torch.cuda.is_available():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


class _Pool:
    def __init__(self, world_size: int, env: dict[str, str]):
        ctx = _context(env)
        self.world_size = world_size
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(world_size)]
        self.procs = [ctx.Process(target=_worker, args=(r, world_size, self.tasks[r], self.results, env))
                      for r in range(world_size)]
        for p in self.procs:
            p.start()

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def largest_rss(self) -> int:
        """Resident bytes of the largest rank (0 when unreadable)."""
        largest = 0
        for p in self.procs:
            try:
                for line in open(f"/proc/{p.pid}/status"):
                    if line.startswith("VmRSS:"):
                        largest = max(largest, int(line.split()[1]) * 1024)
            except OSError:
                continue
        return largest

    def close(self, kill: bool = False) -> None:
        for p, q in zip(self.procs, self.tasks):
            if not kill and p.is_alive():
                q.put(None)
        for p in self.procs:
            p.join(timeout=0.1 if kill else 5)
            if p.is_alive():
                p.kill()
                p.join()


_POOLS: dict[tuple, _Pool] = {}  # by (world size, environment); most recently used last
# Starting a pool costs seconds per rank (imports, megatron-core's first build), ten times a short
# scenario: pools of 1, 2 and 4 ranks stay side by side. Each rank holds ~1 GB and the pytest workers
# share the machine, so the least recently used pools are closed first when memory runs short.
MAX_POOLED_RANKS = 7
MIN_AVAILABLE = 6 * 2**30  # bytes of MemAvailable to keep: below it, idle pools are closed
MAX_RANK_RSS = 2 * 2**30  # a pool whose ranks grew past this (allocator high-water marks) is replaced


def _available_memory() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return MIN_AVAILABLE  # unknown: rely on the rank count alone


def close_idle_pools_if_memory_is_short() -> None:
    """Close pools, least recently used first, while memory is below MIN_AVAILABLE (before a new pool
    starts, and between tests: tests/conftest.py)."""
    while _POOLS and _available_memory() < MIN_AVAILABLE:
        _POOLS.pop(next(iter(_POOLS))).close()


def _make_room(world_size: int) -> None:
    """Close the least recently used pools until a new one of `world_size` ranks fits."""
    close_idle_pools_if_memory_is_short()
    while _POOLS and sum(p.world_size for p in _POOLS.values()) + world_size > MAX_POOLED_RANKS:
        _POOLS.pop(next(iter(_POOLS))).close()


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def run_ranks(world_size: int, fn, *args, timeout: float = 300.0, env: dict[str, str] | None = None) -> list:
    """Call `fn(*args)` on `world_size` ranks; returns the results ordered by rank. `env`: variables
    the ranks need before megatron-core is imported (a pool of their own)."""
    key = (world_size, tuple(sorted((env or {}).items())))
    pool = _POOLS.pop(key, None)
    if pool is None or not pool.alive():
        if pool is not None:
            pool.close(kill=True)
        _make_room(world_size)
        pool = _Pool(world_size, dict(env or {}))
    _POOLS[key] = pool
    port = free_port()
    for q in pool.tasks:
        q.put((port, fn, args))
    collected: dict[int, object] = {}
    errors = []
    try:
        for _ in range(world_size):
            rank, status, value = pool.results.get(timeout=timeout)
            if status == "error":
                errors.append(f"rank {rank} failed:\n{value}")
                break
            collected[rank] = torch.load(io.BytesIO(value), weights_only=False)
    except queue.Empty:
        errors.append(f"timed out after {timeout:.0f}s waiting for ranks {sorted(set(range(world_size)) - set(collected))}")
    if errors:
        pool.close(kill=True)
        del _POOLS[key]
        raise RuntimeError("\n".join(errors))
    if pool.largest_rss() > MAX_RANK_RSS:
        _POOLS.pop(key).close()
    return [collected[r] for r in range(world_size)]
