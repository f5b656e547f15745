#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one command, for a machine with a CUDA GPU.
#
#   bash bench/gpu_suite.sh [--dry-run] [OUTPUT_DIR]
#
# Records the machine (nvidia-smi) and the versions of python, torch, megatron-core, Transformer
# Engine and flash-attn, then runs the GPU tests and every script of bench/ at the sizes the issues
# ask for, appending each step's output to OUTPUT_DIR/gpu_report.md (Markdown). A failing step is
# recorded in the report (exit status, last lines of its stderr) and the suite goes on with the next
# one; the exit status is 1 when any step failed. Each step's stderr is kept in OUTPUT_DIR/logs/.
#
#   OUTPUT_DIR    default: $OUT when set (the device machine's result folder), else bench/out
#   PY            the interpreter (default .venv/bin/python)
#   STEP_TIMEOUT  seconds one step may run before it is stopped and recorded as failed (default 3600)
#   --dry-run     print the plan (each step's title as a # comment, then its command) and run nothing
set -euo pipefail

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
OUT_DIR=""
while (($# > 0)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            echo "gpu_suite.sh: unknown option $1" >&2
            usage >&2
            exit 2
            ;;
        *) OUT_DIR=$1 ;;
    esac
    shift
done

# A folder named on the command line or by $OUT is relative to where the suite was started;
# the default bench/out, like PY's default, to the repository root (where the steps run).
OUT_DIR=${OUT_DIR:-${OUT:-}}
if [[ -n $OUT_DIR && $OUT_DIR != /* ]]; then
    OUT_DIR="$PWD/$OUT_DIR"
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PY:-.venv/bin/python}
OUT_DIR=${OUT_DIR:-bench/out}
STEP_TIMEOUT=${STEP_TIMEOUT:-3600}
REPORT="$OUT_DIR/gpu_report.md"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

STEP_NO=0
SUMMARY=()
FAILED=0

# gpu_info and versions run as steps (`step TITLE gpu_info`).
# shellcheck disable=SC2329
gpu_info() {
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "nvidia-smi not found"
        return 1
    fi
    nvidia-smi
}

# shellcheck disable=SC2329
versions() {
    "$PY" - <<'EOF'
import importlib.metadata as md
import platform

print("python", platform.python_version())
for dist in ("torch", "megatron-core", "transformer-engine", "transformer-engine-torch", "flash-attn",
             "transformers", "numpy"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
import torch

print("torch CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(), "| CUDA available",
      torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability())
EOF
}

# The command line as one would type it (arguments quoted only where the shell needs it).
show() {
    local out="" arg
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./=,:@%+-]+$ ]]; then
            out+=" $arg"
        else
            out+=" $(printf '%q' "$arg")"
        fi
    done
    printf '%s' "${out# }"
}

# step TITLE COMMAND...: run COMMAND (stdout into the report, stderr into logs/), record the outcome.
step() {
    local title=$1
    shift
    local cmd
    cmd=$(show "$@")
    STEP_NO=$((STEP_NO + 1))
    if ((DRY_RUN)); then
        printf '# %d. %s\n%s\n' "$STEP_NO" "$title" "$cmd"
        return 0
    fi
    local log
    log=$(printf '%s/logs/%02d.stderr.log' "$OUT_DIR" "$STEP_NO")
    printf '== %d. %s\n' "$STEP_NO" "$title" >&2
    # shellcheck disable=SC2016  # the backticks are Markdown
    printf '\n## %d. %s\n\n`%s`\n\n```text\n' "$STEP_NO" "$title" "$cmd" >>"$REPORT"
    local start=$SECONDS rc=0
    if [[ $(type -t "$1") == function ]]; then
        "$@" 2>"$log" | tee -a "$REPORT" || rc=$?
    else
        timeout --kill-after=60 "$STEP_TIMEOUT" "$@" 2>"$log" | tee -a "$REPORT" || rc=$?
    fi
    local took=$((SECONDS - start))
    printf '```\n\n' >>"$REPORT"
    if ((rc == 0)); then
        printf 'ok in %d s\n' "$took" >>"$REPORT"
        SUMMARY+=("| $STEP_NO | $title | ok | $took |")
    else
        local why="exit $rc"
        if ((rc == 124)); then
            why="timed out after $STEP_TIMEOUT s"
        fi
        {
            printf '**FAILED** (%s) after %d s; last lines of stderr (%s):\n\n```text\n' "$why" "$took" "$log"
            tail -n 40 "$log"
            printf '```\n'
        } >>"$REPORT"
        SUMMARY+=("| $STEP_NO | $title | **FAILED** ($why) | $took |")
        FAILED=1
        printf '== %d. %s FAILED (%s), going on\n' "$STEP_NO" "$title" "$why" >&2
    fi
}

if ((!DRY_RUN)); then
    mkdir -p "$OUT_DIR/logs"
    {
        printf '# GPU measurements\n\n'
        printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        printf -- '- host: %s\n' "$(hostname)"
        printf -- '- commit: %s\n' "$(git rev-parse HEAD 2>/dev/null || echo unknown)"
        # shellcheck disable=SC2016  # the backticks are Markdown
        printf -- '- command: `bash bench/gpu_suite.sh %s` (PY=%s, STEP_TIMEOUT=%s)\n' "$OUT_DIR" "$PY" "$STEP_TIMEOUT"
    } >"$REPORT"
fi

# A ~1.5B-parameter model (1,477,699,584: 16 layers x hidden 2048, FFN 5632, 16/4 heads, untied
# embeddings of the full vocabulary) for the checkpoint timings.
CKPT_MODEL=(--preset emu3_8b model.num_layers=16 model.hidden_size=2048 model.ffn_hidden_size=5632
    model.num_attention_heads=16 model.num_query_groups=4)

step "machine (nvidia-smi)" gpu_info
step "versions" versions
step "GPU tests" "$PY" -m pytest -m gpu tests/gpu tests/generation -q
step "train step, Emu3-8B layer shape, 4 layers, seq 5120" "$PY" bench/bench_train_step.py --layers 4 --seq 5120
step "train step, same, selective recompute" "$PY" bench/bench_train_step.py --layers 4 --seq 5120 \
    parallel.recompute=selective
step "attention TFLOP/s, 1 document per sequence" "$PY" bench/bench_attention.py --seqs 8192,32768,131072 --docs 1
step "attention TFLOP/s, 8 documents per sequence" "$PY" bench/bench_attention.py --seqs 8192,32768,131072 --docs 8
step "checkpoint save/load, ~1.5B parameters, sync" "$PY" bench/bench_checkpoint.py "${CKPT_MODEL[@]}"
step "checkpoint save/load, ~1.5B parameters, async save" "$PY" bench/bench_checkpoint.py "${CKPT_MODEL[@]}" \
    checkpoint.async_save=true
step "generation, tiny recipe" "$PY" bench/bench_generation.py --device cuda
step "generation, 8 layers x 512" "$PY" bench/bench_generation.py --device cuda --overrides model.num_layers=8 \
    model.hidden_size=512 model.ffn_hidden_size=1408 model.num_attention_heads=8 model.num_query_groups=4
step "preprocessing: text and real-size VQ" "$PY" bench/bench_preprocess.py
step "data loader and packing (CPU)" "$PY" bench/bench_dataset.py --workdir "${TMPDIR:-/tmp}/emu3_bench_dataset"
step "ring attention over gloo (CPU)" "$PY" bench/bench_ring_attention.py --seq 1024,2048,4096 --cp 1,2,4 \
    --docs 1,8

if ((!DRY_RUN)); then
    {
        printf '\n## Summary\n\n| step | what | result | seconds |\n|---|---|---|---|\n'
        printf '%s\n' "${SUMMARY[@]}"
    } >>"$REPORT"
    echo "report: $REPORT" >&2
fi
exit "$FAILED"
