"""Running shards in worker processes: a shared queue of shard specs, a progress bar, dead workers.

`run_shards(pending, make_processor, ...)` processes every spec in `pending`. `make_processor(worker_id,
device, workers)` builds, inside each worker, a callable `(spec, progress) -> None` that writes one
shard completely (atomically: the caller's shard files decide what is complete). One worker runs in
the main process (no start-up cost; a crash there ends the run, which is resumable). Several workers
are spawned processes pulling specs from a queue; `make_processor` must then be picklable (a
top-level class instance). A worker that dies (killed, segfault, an error outside a row) costs only
the shard it held: the others keep going, and the returned {shard index: reason} names the failures.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
from typing import Callable, Protocol

from tqdm import tqdm

from megatron_emu3.offline.plan import ShardSpec


class ShardProcessor(Protocol):
    def __call__(self, spec: ShardSpec, progress: Callable[[int], None]) -> None: ...


MakeProcessor = Callable[[int, str, int], ShardProcessor]


def _worker_main(worker_id: int, device: str, workers: int, make_processor: MakeProcessor, tasks, events) -> None:
    """A worker process: take shard specs until the queue is empty; report progress and completions."""
    logging.basicConfig(level=logging.WARNING, format=f"[worker {worker_id}] %(levelname)s %(message)s")
    process = make_processor(worker_id, device, workers)
    while True:
        try:
            spec = tasks.get_nowait()
        except queue.Empty:
            break
        events.put(("start", worker_id, spec.index))
        process(spec, lambda n: events.put(("rows", worker_id, n)))
        events.put(("done", worker_id, spec.index))


def run_shards(pending: list[ShardSpec], make_processor: MakeProcessor, workers: int, devices: list[str],
               progress: bool = True, desc: str = "rows", name: str = "emu3-worker") -> dict[int, str]:
    """Process `pending` with `workers` processes; returns {shard index: reason} for shards that failed."""
    if not pending:
        return {}
    workers = max(1, min(workers, len(pending)))
    total = sum(s.num_rows for s in pending)
    if workers == 1:
        process = make_processor(0, devices[0], 1)
        with tqdm(total=total, unit="row", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
            for spec in pending:
                process(spec, bar.update)
        return {}
    ctx = mp.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for spec in pending:
        tasks.put(spec)
    procs = [ctx.Process(target=_worker_main, args=(w, devices[w % len(devices)], workers, make_processor, tasks,
                                                    events), name=f"{name}-{w}", daemon=False) for w in range(workers)]
    for p in procs:
        p.start()
    held: dict[int, int] = {}  # worker -> shard it is writing
    done: set[int] = set()
    failed: dict[int, str] = {}
    bar = tqdm(total=total, unit="row", desc=desc, disable=not progress, dynamic_ncols=True)

    def handle(event):
        kind, worker = event[0], event[1]
        if kind == "start":
            held[worker] = event[2]
        elif kind == "rows":
            bar.update(event[2])
        elif kind == "done":
            held.pop(worker, None)
            done.add(event[2])

    while any(p.is_alive() for p in procs):
        try:
            handle(events.get(timeout=0.5))
        except queue.Empty:
            pass
        for w, p in enumerate(procs):
            if not p.is_alive() and p.exitcode not in (0, None) and w in held:
                shard = held.pop(w)
                failed[shard] = f"worker {w} on {devices[w % len(devices)]} died (exit code {p.exitcode}) " \
                                f"while writing this shard; re-run the same command to redo it"
    while True:  # events sent just before the last worker exited
        try:
            handle(events.get(timeout=0.2))
        except queue.Empty:
            break
    bar.close()
    for w, p in enumerate(procs):
        p.join()
        if p.exitcode != 0 and w in held:
            failed[held.pop(w)] = f"worker {w} died (exit code {p.exitcode}) while writing this shard; re-run"
    for spec in pending:
        if spec.index not in done and spec.index not in failed:
            failed[spec.index] = "not started: every worker died before reaching it; re-run the same command"
    return failed
