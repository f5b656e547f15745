"""Running a preprocessing job: plan, skip complete shards, fan out to worker processes, report.

The worker processes are the shared pool (`offline/pool.py`: spawned, one per device on GPU nodes,
pulling shard specs from a queue; a single worker runs in the main process). A worker that dies
costs only the shard it held: the other workers keep going and their shards stay; the run then
exits non-zero naming the failed shards, and re-running the same command redoes just those. The report is rebuilt from the
records of all of this task's complete shards, so it is the same after a resume as after one run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from megatron_emu3.offline.plan import ShardSpec, cut_shards, task_shards
from megatron_emu3.offline.pool import run_shards
from megatron_emu3.preprocess.manifest import Manifest
from megatron_emu3.preprocess.plan import find_duplicates
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


class ShardMaker:
    """Builds, inside a worker, the callable that writes one shard (picklable for spawned workers)."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self, worker_id: int, device: str, workers: int):
        import torch

        settings = self.job.settings
        if settings.threads or workers > 1:
            torch.set_num_threads(settings.threads or max(1, (os.cpu_count() or 1) // workers))
        worker = Worker(settings, worker_id, device)
        manifests: dict[int, Manifest] = {}

        def process(spec: ShardSpec, progress) -> None:
            if spec.manifest_index not in manifests:
                manifests[spec.manifest_index] = Manifest(self.job.manifest_paths[spec.manifest_index])
            worker.process_shard(spec, manifests[spec.manifest_index], self.job.duplicates,
                                 self.job.fingerprints[spec.index], progress=progress)

        return process


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
    failed = run_shards(pending, ShardMaker(job), workers, devices, progress, desc="preprocess",
                        name="emu3-preprocess")
    report = build_report(job, prefixes, failed)
    report["shards_resumed"] = resumed
    report["seconds"] = round(time.time() - started, 3)
    return report


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
