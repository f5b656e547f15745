"""Running a preprocessing job: plan, skip complete shards, fan out to worker processes, report.

Each worker is its own process (spawned; one per device on GPU nodes) pulling shard specs from a
shared queue (a single worker runs in the main process). A worker that dies (killed, segfault, an error outside a row) costs only the shard it
held: the other workers keep going and their shards stay; the run then exits non-zero naming the
failed shards, and re-running the same command redoes just those. The report is rebuilt from the
records of all of this task's complete shards, so it is the same after a resume as after one run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue
import time
from pathlib import Path

from tqdm import tqdm

from megatron_emu3.preprocess.manifest import Manifest
from megatron_emu3.preprocess.plan import ShardSpec, cut_shards, find_duplicates, task_shards
from megatron_emu3.preprocess.shards import RESIZE_KINDS, read_complete, record_path, remove_shard, shard_prefix
from megatron_emu3.preprocess.worker import Settings, Worker

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Job:
    """What one task of a run does (built in the parent, sent to every worker)."""

    settings: Settings
    manifest_paths: list[str]
    shards: list[ShardSpec]
    duplicates: dict
    fingerprints: dict[int, str]
    task_index: int = 0
    task_count: int = 1
    workers: int = 1


def vq_identity(vq_dir: str | None) -> str | None:
    if vq_dir is None:
        return None
    return hashlib.sha256(Path(vq_dir, "config.json").read_bytes()).hexdigest()[:16]


def fingerprint(settings: Settings, manifest: Manifest, spec: ShardSpec, duplicates: dict) -> str:
    """A digest of everything that decides a shard's bytes."""
    dups = sorted((row, list(first)) for (m, row), first in duplicates.items() if m == spec.manifest_index
                  and spec.start < row <= spec.stop)
    payload = {"settings": settings.content(), "vq": vq_identity(settings.vq_dir), "manifest": manifest.identity,
               "rows": [spec.start, spec.stop], "index": spec.index, "duplicates": dups}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def plan_job(settings: Settings, manifest_paths: list[str], task_index: int, task_count: int) -> tuple[Job, list]:
    """Open the manifests (ManifestError on an unusable one), cut shards, find duplicates."""
    manifests = [Manifest(p) for p in manifest_paths]
    duplicates = {} if settings.keep_duplicates else find_duplicates(manifests)
    shards = task_shards(cut_shards(manifests, settings.shard_size), task_index, task_count)
    prints = {s.index: fingerprint(settings, manifests[s.manifest_index], s, duplicates) for s in shards}
    return Job(settings, list(manifest_paths), shards, duplicates, prints, task_index, task_count), manifests


def _worker_main(worker_id: int, device: str, job: Job, tasks, events) -> None:
    """A worker process: take shard specs until the queue is empty; report progress and results."""
    logging.basicConfig(level=logging.WARNING, format=f"[worker {worker_id}] %(levelname)s %(message)s")
    import torch

    threads = job.settings.threads or max(1, (os.cpu_count() or 1) // max(1, job.workers))
    torch.set_num_threads(threads)
    worker = Worker(job.settings, worker_id, device)
    manifests: dict[int, Manifest] = {}
    while True:
        try:
            spec = tasks.get_nowait()
        except queue.Empty:
            break
        events.put(("start", worker_id, spec.index))
        if spec.manifest_index not in manifests:
            manifests[spec.manifest_index] = Manifest(job.manifest_paths[spec.manifest_index])
        record = worker.process_shard(spec, manifests[spec.manifest_index], job.duplicates,
                                      job.fingerprints[spec.index],
                                      progress=lambda n: events.put(("rows", worker_id, n)))
        events.put(("done", worker_id, spec.index, record["documents_written"]))


def run_job(job: Job, workers: int, devices: list[str], progress: bool = True) -> dict:
    """Process every incomplete shard of `job` with `workers` processes; returns the report dict."""
    started = time.time()
    prefixes = {s.index: shard_prefix(job.settings.output_prefix, s.index) for s in job.shards}
    pending = []
    for spec in job.shards:
        if read_complete(prefixes[spec.index], job.fingerprints[spec.index]) is None:
            remove_shard(prefixes[spec.index])
            pending.append(spec)
    resumed = len(job.shards) - len(pending)
    if resumed:
        log.info("%d of %d shards already complete; %d to do", resumed, len(job.shards), len(pending))
    failed: dict[int, str] = {}
    workers = max(1, min(workers, len(pending)))
    if pending and workers == 1:
        _run_here(job, pending, devices[0], progress)
    elif pending:
        failed = _fan_out(job, pending, workers, devices, progress)
    report = build_report(job, prefixes, failed)
    report["shards_resumed"] = resumed
    report["seconds"] = round(time.time() - started, 3)
    return report


def _run_here(job: Job, pending: list[ShardSpec], device: str, progress: bool) -> None:
    """One worker: run in this process (no start-up cost; a crash here ends the run, resumable)."""
    import torch

    if job.settings.threads:
        torch.set_num_threads(job.settings.threads)
    worker = Worker(job.settings, 0, device)
    manifests: dict[int, Manifest] = {}
    with tqdm(total=sum(s.num_rows for s in pending), unit="row", desc="preprocess", disable=not progress,
              dynamic_ncols=True) as bar:
        for spec in pending:
            if spec.manifest_index not in manifests:
                manifests[spec.manifest_index] = Manifest(job.manifest_paths[spec.manifest_index])
            worker.process_shard(spec, manifests[spec.manifest_index], job.duplicates, job.fingerprints[spec.index],
                                 progress=bar.update)


def _fan_out(job: Job, pending: list[ShardSpec], workers: int, devices: list[str], progress: bool) -> dict[int, str]:
    ctx = mp.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for spec in pending:
        tasks.put(spec)
    job = dataclasses.replace(job, workers=workers)
    procs = [ctx.Process(target=_worker_main, args=(w, devices[w % len(devices)], job, tasks, events),
                         name=f"emu3-preprocess-{w}", daemon=False) for w in range(workers)]
    for p in procs:
        p.start()
    held: dict[int, int] = {}  # worker -> shard it is writing
    done: set[int] = set()
    failed: dict[int, str] = {}
    bar = tqdm(total=sum(s.num_rows for s in pending), unit="row", desc="preprocess", disable=not progress,
               dynamic_ncols=True)

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


def build_report(job: Job, prefixes: dict[int, Path], failed: dict[int, str]) -> dict:
    """The run's report from the records of this task's complete shards."""
    report = {
        "inputs": 0, "documents_written": 0, "documents_by_kind": {}, "tokens": {"text": 0, "vision": 0},
        "longest_document": 0, "shards": [], "empty_shards": [], "skipped_count": 0, "skipped": [],
        "resized_to_fit": dict.fromkeys(RESIZE_KINDS, 0),
        "failed_shards": [], "manifests": job.manifest_paths, "task": {"index": job.task_index, "count": job.task_count},
        "settings": job.settings.content(),
    }
    for spec in job.shards:
        prefix = prefixes[spec.index]
        if spec.index in failed or not record_path(prefix).is_file():
            report["failed_shards"].append({"shard": str(prefix), "manifest": job.manifest_paths[spec.manifest_index],
                                            "rows": [spec.start + 1, spec.stop],
                                            "reason": failed.get(spec.index, "incomplete; re-run")})
            continue
        rec = json.loads(record_path(prefix).read_text())
        report["inputs"] += rec["rows"]
        report["documents_written"] += rec["documents_written"]
        for kind, n in rec["documents_by_kind"].items():
            report["documents_by_kind"][kind] = report["documents_by_kind"].get(kind, 0) + n
        for key in ("text", "vision"):
            report["tokens"][key] += rec["tokens"][key]
        report["longest_document"] = max(report["longest_document"], rec["longest_document"])
        report["skipped"].extend(rec["skipped"])
        report.setdefault("vision_layout", rec.get("vision_layout"))
        for key, n in rec.get("resized_to_fit", {}).items():
            report["resized_to_fit"][key] += n
        (report["shards"] if rec["documents_written"] else report["empty_shards"]).append(str(prefix))
    report["skipped_count"] = len(report["skipped"])
    report["completed"] = not report["failed_shards"]
    return report


def write_report(report: dict, path: str | Path) -> None:
    """Write the report atomically (temp name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)
