"""The command line of tools/curate.py: arguments, checks that fail fast, exit codes.

Exit codes: 0 the run completed and was merged (dropped rows are in P_dropped.jsonl, not errors), or
this Slurm task finished its shards and others are still missing; 1 some shards failed (a worker
died; re-run the same command); 2 unusable arguments or inputs (rules file, manifests, a rule that
is on without its package, shards on disk from other rules).
"""

from __future__ import annotations

import argparse
import logging
import sys

from megatron_emu3.curate.rules import RulesError, load_rules
from megatron_emu3.curate.runner import plan_job, run_job
from megatron_emu3.curate.shards import ShardMismatchError
from megatron_emu3.curate.worker import Settings
from megatron_emu3.offline.plan import cli_task
from megatron_emu3.preprocess.manifest import ManifestError

log = logging.getLogger("curate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="curate.py", description="Filter a captioned image/video corpus with the paper's rules before "
        "tools/preprocess_data.py: writes P_kept.jsonl, P_dropped.jsonl and a report. See docs/curation.md.")
    p.add_argument("--input", nargs="+", required=True, metavar="MANIFEST", help="JSONL or Parquet manifests")
    p.add_argument("--output-prefix", required=True, help="outputs: P_kept.jsonl, P_dropped.jsonl, P_report.*, "
                   "P_clips/, P_shards/")
    p.add_argument("--config", metavar="RULES.yaml", help="the rules file (default: every rule at its default)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per --devices entry, else 1)")
    p.add_argument("--devices", help="torch devices for the aesthetics model, e.g. cuda:0,cuda:1 (default cpu)")
    p.add_argument("--shard-size", type=int, default=100, help="manifest rows per shard, the unit of resume (100)")
    p.add_argument("--threads", type=int, help="threads per worker (default: cores / workers)")
    p.add_argument("--task-index", type=int, help="this task's slice (default: from SLURM_ARRAY_TASK_ID / SLURM_PROCID)")
    p.add_argument("--task-count", type=int, help="number of tasks (default: SLURM_ARRAY_TASK_COUNT / SLURM_NTASKS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _fail(message: str) -> int:
    print(f"curate.py: error: {message}", file=sys.stderr)
    return 2


def _check_packages(rules) -> str | None:
    """The first rule that is on without its package (checked before any work starts)."""
    needs = []
    if rules.image.ocr.enabled or rules.video.ocr.enabled:
        needs.append(("rapidocr_onnxruntime", "rapidocr-onnxruntime", "image.ocr / video.ocr"))
    if rules.video.scenes.enabled:
        needs.append(("scenedetect", "scenedetect-headless", "video.scenes"))
    needs.append(("cv2", "opencv-python-headless", "video.motion (and the worker's thread settings)"))
    for module, package, rule in needs:
        try:
            __import__(module)
        except ImportError as err:
            return (f"{rule} needs the package {package} ({err}); install the curate extra "
                    f"(pip install -e '.[curate]') or turn the rule off in the rules file")
    return None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("curate", "megatron_emu3"):
        logging.getLogger(name).setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else ["cpu"]
    workers = args.workers if args.workers is not None else len(devices)
    if workers < 1 or args.shard_size < 1:
        return _fail("--workers and --shard-size must be at least 1")
    if any(d.startswith("cuda") for d in devices):
        import torch

        if not torch.cuda.is_available():
            return _fail(f"--devices {args.devices} asks for CUDA but torch sees no GPU")
    try:
        rules = load_rules(args.config)
    except RulesError as err:
        return _fail(str(err))
    if problem := _check_packages(rules):
        return _fail(problem)
    try:
        task_index, task_count = cli_task(args.task_index, args.task_count)
    except ValueError as err:
        return _fail(str(err))
    settings = Settings(output_prefix=str(args.output_prefix), shard_size=args.shard_size, threads=args.threads)
    try:
        job = plan_job(rules, settings, [str(p) for p in args.input], task_index, task_count)
    except ManifestError as err:
        return _fail(str(err))
    if not rules.aesthetics_available():
        log.info("aesthetics rules are off: the rules file gives no models.clip_dir / models.aesthetic_mlp")
    log.info("task %d of %d: %d of %d shard(s); %d worker(s) on %s", task_index, task_count, len(job.shards),
             len(job.all_shards), workers, ",".join(devices))
    try:
        status = run_job(job, workers, devices, progress=not args.no_progress)
    except ShardMismatchError as err:
        return _fail(str(err))
    for failure in status["failed_shards"]:
        print(f"curate.py: shard {failure['shard']} failed: {failure['reason']}", file=sys.stderr)
    if status["failed_shards"]:
        return 1
    if status["merged"]:
        out = status["outputs"]
        log.info("kept %s, dropped %s; report %s", out["kept"], out["dropped"], out["report_md"])
    else:
        log.info("this task's shards are complete; %d shard(s) of other tasks are missing, so nothing is merged "
                 "yet (the last task to finish merges; or re-run with --task-count 1 once all are done)",
                 len(status["missing_shards"]))
    return 0
