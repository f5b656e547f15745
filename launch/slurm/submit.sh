#!/usr/bin/env bash
# Submit one training run (train.sbatch) for a recipe; prints the job id (alone) on stdout.
#
#   launch/slurm/submit.sh RECIPE [options] [-- key=value ...]
#
# Options:
#   --run-dir DIR        where the run writes (default: the recipe's run_dir; relative paths are
#                        taken from the repository root, like the trainer)
#   --weights-from DIR   start from the model weights of the run in DIR (stage 2: the stage-1 run
#                        directory); adds checkpoint.load_weights_from=DIR/checkpoints
#   --after JOBID        start only after JOBID succeeded (--dependency=afterok:JOBID); the job is
#                        cancelled if JOBID fails
#   --nodes N            nodes (default: the recipe's launch.nodes)
#   --gpus-per-node G    GPUs per node (default: the recipe's launch.gpus_per_node); 0 = CPU ranks
#   --tasks-per-node T   ranks per node (default: G, one rank per GPU)
#   --cpus-per-task C    CPUs per rank (default: the cluster's default)
#   --time T             time limit (sbatch --time; default: the partition's)
#   --signal-lead S      seconds before the time limit at which the job saves and requeues (600)
#   --name NAME          job name (default: emu3-<recipe name>)
#   --print              print the sbatch command instead of submitting
# Anything after `--` goes to the trainer as key=value overrides.
#
# Cluster settings come from sbatch's own variables (SBATCH_PARTITION, SBATCH_ACCOUNT,
# SBATCH_QOS, SBATCH_EXCLUSIVE, ...) and train.sbatch's (CONTAINER_IMAGE, PYTHON, ...): see
# docs/launch.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EMU3_REPO=${EMU3_REPO:-$(cd "$HERE/../.." && pwd)}
export EMU3_REPO

die() { echo "submit.sh: $*" >&2; exit 2; }

[[ $# -ge 1 && $1 != -* ]] || die "usage: submit.sh RECIPE [options] [-- key=value ...] (see the header)"
RECIPE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[[ -f $RECIPE ]] || die "no recipe at $1"
shift

run_dir='' weights_from='' after='' nodes='' gpus='' tasks='' cpus='' time_limit='' lead=600 name='' print_only=0
overrides=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --run-dir) run_dir=$2; shift 2 ;;
        --weights-from) weights_from=$2; shift 2 ;;
        --after) after=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --gpus-per-node) gpus=$2; shift 2 ;;
        --tasks-per-node) tasks=$2; shift 2 ;;
        --cpus-per-task) cpus=$2; shift 2 ;;
        --time) time_limit=$2; shift 2 ;;
        --signal-lead) lead=$2; shift 2 ;;
        --name) name=$2; shift 2 ;;
        --print) print_only=1; shift ;;
        --) shift; overrides+=("$@"); break ;;
        *) die "unknown option $1 (trainer overrides go after --)" ;;
    esac
done

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $EMU3_REPO/.venv/bin/python ]]; then PYTHON=$EMU3_REPO/.venv/bin/python; else PYTHON=python3; fi
fi
# Make a relative run_dir absolute against the repository root (the trainer's working directory).
if [[ -n $run_dir && $run_dir != /* ]]; then run_dir=$EMU3_REPO/$run_dir; fi
if [[ -n $weights_from ]]; then
    [[ $weights_from == /* ]] || weights_from=$(cd "$weights_from" 2>/dev/null && pwd || echo "$PWD/$weights_from")
    overrides+=("checkpoint.load_weights_from=$weights_from/checkpoints")
fi

# Resolve the recipe the way the trainer will (and fail here, not in the queue, on a bad one).
RUN_DIR='' TRAIN_ITERS='' NODES='' GPUS_PER_NODE=''
# (train.sbatch passes run_dir=RUN_DIR to the trainer itself.)
run_dir_override=()
if [[ -n $run_dir ]]; then run_dir_override=("run_dir=$run_dir"); fi
info=$(cd "$EMU3_REPO" && "$PYTHON" launch/slurm/run_info.py "$RECIPE" "${overrides[@]}" "${run_dir_override[@]}") \
    || die "cannot resolve $RECIPE with ${overrides[*]:-no overrides} (PYTHON=$PYTHON)"
eval "$info"
nodes=${nodes:-$NODES}
gpus=${gpus:-$GPUS_PER_NODE}
tasks=${tasks:-$gpus}
((tasks > 0)) || die "--tasks-per-node must be > 0 (with --gpus-per-node 0, give --tasks-per-node)"
name=${name:-emu3-$(basename "$RECIPE" .yaml)}

args=(--parsable --job-name="$name" --nodes="$nodes" --ntasks-per-node="$tasks"
    --requeue --open-mode=append --signal="B:USR1@$lead"
    --chdir="$EMU3_REPO" --output="$RUN_DIR/logs/%x-%j.out")
if ((gpus > 0)); then args+=(--gpus-per-node="$gpus"); fi
if [[ -n $cpus ]]; then args+=(--cpus-per-task="$cpus"); fi
if [[ -n $time_limit ]]; then args+=(--time="$time_limit"); fi
if [[ -n $after ]]; then args+=(--dependency="afterok:$after" --kill-on-invalid-dep=yes); fi
cmd=(sbatch "${args[@]}" "$HERE/train.sbatch" "$RECIPE" "${overrides[@]}")

if ((print_only)); then
    printf 'EMU3_RUN_DIR=%q EMU3_TRAIN_ITERS=%q' "$RUN_DIR" "$TRAIN_ITERS"
    printf ' %q' "${cmd[@]}"
    echo
    exit 0
fi
mkdir -p "$RUN_DIR/logs"
out=$(EMU3_RUN_DIR=$RUN_DIR EMU3_TRAIN_ITERS=$TRAIN_ITERS "${cmd[@]}") || die "sbatch failed"
job=${out%%;*}
echo "submit.sh: job $job: $name, $nodes node(s) x $tasks rank(s), run dir $RUN_DIR${after:+, after job $after}" >&2
echo "$job"
