#!/usr/bin/env bash
# Submit the whole pretraining chain: stage 1, then stage 2 from stage 1's weights, chained with
# --dependency=afterok (stage 2 waits for stage 1 to finish, through any number of requeues, and is
# cancelled if stage 1 fails).
#
#   launch/slurm/submit_pipeline.sh --run-root DIR [options] [-- key=value ...]
#
# Options:
#   --run-root DIR        stage 1 writes DIR/stage1, stage 2 writes DIR/stage2
#   --stage1-recipe PATH  default examples/recipes/emu3_8b_stage1.yaml
#   --stage2-recipe PATH  default examples/recipes/emu3_8b_stage2.yaml
#   --stage1 OPTION VALUE a submit.sh option for stage 1 only (repeatable), e.g. --stage1 --nodes 8
#   --stage2 OPTION VALUE the same for stage 2, e.g. --stage2 --time 48:00:00
#   --set1 key=value      a trainer override for stage 1 only (repeatable); --set2 for stage 2
#   any other submit.sh option (--nodes, --gpus-per-node, --tasks-per-node, --time, ...) applies
#   to both stages; overrides after `--` go to both trainers.
# Prints "STAGE1_JOB STAGE2_JOB" on stdout.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "submit_pipeline.sh: $*" >&2; exit 2; }

run_root='' recipe1=$HERE/../../examples/recipes/emu3_8b_stage1.yaml recipe2=$HERE/../../examples/recipes/emu3_8b_stage2.yaml
both=() only1=() only2=() set1=() set2=() common=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --run-root) run_root=$2; shift 2 ;;
        --stage1-recipe) recipe1=$2; shift 2 ;;
        --stage2-recipe) recipe2=$2; shift 2 ;;
        --stage1) only1+=("$2" "$3"); shift 3 ;;
        --stage2) only2+=("$2" "$3"); shift 3 ;;
        --set1) set1+=("$2"); shift 2 ;;
        --set2) set2+=("$2"); shift 2 ;;
        --print) die "--print is for submit.sh (a pipeline needs stage 1's job id)" ;;
        --) shift; common+=("$@"); break ;;
        --*) both+=("$1" "$2"); shift 2 ;;
        *) die "unexpected argument $1 (trainer overrides go after --)" ;;
    esac
done
[[ -n $run_root ]] || die "give --run-root DIR (stage 1 -> DIR/stage1, stage 2 -> DIR/stage2)"
[[ $run_root == /* ]] || run_root=$PWD/$run_root

job1=$("$HERE/submit.sh" "$recipe1" --run-dir "$run_root/stage1" --name emu3-stage1 \
    "${both[@]}" "${only1[@]}" -- "${common[@]}" "${set1[@]}")
job2=$("$HERE/submit.sh" "$recipe2" --run-dir "$run_root/stage2" --name emu3-stage2 \
    --weights-from "$run_root/stage1" --after "$job1" \
    "${both[@]}" "${only2[@]}" -- "${common[@]}" "${set2[@]}") || {
    echo "submit_pipeline.sh: stage 2 submission failed; cancelling stage 1 (job $job1)" >&2
    scancel "$job1" || true
    exit 2
}
echo "submit_pipeline.sh: stage 1 = job $job1, stage 2 = job $job2 (afterok:$job1); logs under $run_root/stage{1,2}/logs" >&2
echo "$job1 $job2"
