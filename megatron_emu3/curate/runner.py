"""Running a curation job: plan shards, skip complete ones, fan out to workers, then merge.

Sharding, the Slurm slice and the worker pool are the preprocessing ones (`offline/`). Each task
writes its shards; whichever task finds every shard of the run complete merges them: the
near-duplicate pass over all kept pictures, then `P_kept.jsonl`, `P_dropped.jsonl` and the report.
A killed run re-run with the same command redoes only incomplete shards and gives the same outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from megatron_emu3.curate import shards as shard_files
from megatron_emu3.curate.dedup import near_duplicates
from megatron_emu3.curate.rules import Rules
from megatron_emu3.curate.worker import Curator, Settings
from megatron_emu3.offline.plan import ShardSpec, cut_shards, task_shards
from megatron_emu3.offline.pool import run_shards
from megatron_emu3.preprocess.manifest import Manifest

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Job:
    rules: Rules
    settings: Settings
    manifest_paths: list[str]
    all_shards: list[ShardSpec]
    shards: list[ShardSpec]  # this task's
    fingerprints: dict[int, str]
    task_index: int = 0
    task_count: int = 1


def plan_job(rules: Rules, settings: Settings, manifest_paths: list[str], task_index: int = 0,
             task_count: int = 1) -> Job:
    """Open the manifests (ManifestError on an unusable one) and cut shards."""
    manifests = [Manifest(p) for p in manifest_paths]
    all_shards = cut_shards(manifests, settings.shard_size)
    prints = {}
    for s in all_shards:
        payload = {"version": shard_files.FORMAT_VERSION, "rules": rules.content(),
                   "manifest": manifests[s.manifest_index].identity, "rows": [s.start, s.stop], "index": s.index}
        prints[s.index] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    return Job(rules, settings, list(manifest_paths), all_shards, task_shards(all_shards, task_index, task_count),
               prints, task_index, task_count)


class CuratorMaker:
    """Builds, inside a worker, the callable that curates one shard (picklable for spawned workers)."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self, worker_id: int, device: str, workers: int):
        import cv2
        import torch

        threads = self.job.settings.threads or max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        curator = Curator(self.job.rules, self.job.settings, device)
        manifests: dict[int, Manifest] = {}

        def process(spec: ShardSpec, progress) -> None:
            if spec.manifest_index not in manifests:
                manifests[spec.manifest_index] = Manifest(self.job.manifest_paths[spec.manifest_index])
            curator.process_shard(spec, manifests[spec.manifest_index], self.job.fingerprints[spec.index], progress)

        return process


def run_job(job: Job, workers: int, devices: list[str], progress: bool = True) -> dict:
    """Curate this task's incomplete shards; merge if the whole run is complete. Returns a status dict."""
    started = time.time()
    prefix = job.settings.output_prefix
    pending = []
    for spec in job.shards:
        if shard_files.read_complete(prefix, spec.index, job.fingerprints[spec.index]) is None:
            shard_files.remove_shard(prefix, spec.index)
            pending.append(spec)
    resumed = len(job.shards) - len(pending)
    if resumed:
        log.info("%d of %d shards already complete; %d to do", resumed, len(job.shards), len(pending))
    failed = run_shards(pending, CuratorMaker(job), workers, devices, progress, desc="curate", name="emu3-curate")
    missing = [s.index for s in job.all_shards
               if shard_files.read_complete(prefix, s.index, job.fingerprints[s.index]) is None]
    status = {"shards": len(job.shards), "shards_resumed": resumed, "seconds": round(time.time() - started, 3),
              "failed_shards": [{"shard": i, "reason": r} for i, r in sorted(failed.items())],
              "missing_shards": missing, "merged": False}
    if not missing:
        status["merged"] = True
        status["outputs"] = merge(job, status["seconds"])
    return status


def merge(job: Job, seconds: float) -> dict:
    """The near-duplicate pass, then P_kept.jsonl / P_dropped.jsonl and the report, from all shards."""
    from megatron_emu3.curate.report import build_report, write_report

    prefix = job.settings.output_prefix
    decisions, records = [], []
    for spec in job.all_shards:
        decisions.extend(shard_files.read_decisions(prefix, spec.index))
        records.append(shard_files.read_complete(prefix, spec.index, job.fingerprints[spec.index]))
    dedup = job.rules.image.dedup
    if dedup.enabled:
        images = [(i, d["kept_row"]["scores"]["phash"]) for i, d in enumerate(decisions)
                  if d["status"] == "kept" and d.get("kind") == "image" and "phash" in d["kept_row"].get("scores", {})]
        for i, (first, dist) in near_duplicates(images, dedup.max_distance).items():
            d, of = decisions[i], decisions[first]["source"]
            decisions[i] = {**{k: v for k, v in d.items() if k != "kept_row"}, "status": "dropped", "field": "image",
                            "rule": "image.near_duplicate", "value": dist, "scores": d["kept_row"]["scores"],
                            "duplicate_of": of, "reason": f"near-duplicate of {of['manifest']} row {of['row']} "
                            f"(pHash distance {dist} <= {dedup.max_distance}); the first is kept"}
    kept_path, dropped_path = Path(f"{prefix}_kept.jsonl"), Path(f"{prefix}_dropped.jsonl")
    with _atomic(kept_path) as kept, _atomic(dropped_path) as dropped:
        for d in decisions:
            if d["status"] == "kept":
                kept.write(json.dumps(d["kept_row"], ensure_ascii=False) + "\n")
            else:
                dropped.write(json.dumps({k: v for k, v in d.items() if k not in ("status", "source")},
                                         ensure_ascii=False) + "\n")
    report = build_report(job, decisions, records, seconds)
    paths = write_report(report, decisions, prefix)
    return {"kept": str(kept_path), "dropped": str(dropped_path), **paths}


class _atomic:
    """A text file written under a hidden name and renamed on success (so a reader never sees half)."""

    def __init__(self, path: Path):
        # the pid keeps two Slurm tasks that finish together from writing one temporary file
        self.path, self.tmp = path, path.with_name(f".{path.name}.{os.getpid()}.partial")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "w", encoding="utf-8")
        return self.file

    def __exit__(self, kind, *_):
        self.file.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
