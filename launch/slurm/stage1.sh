#!/usr/bin/env bash
# Stage 1 (text + images, context 5,120, from scratch): submit.sh with the stage-1 recipe.
#
#   launch/slurm/stage1.sh [submit.sh options] [-- key=value ...]
#   STAGE1_RECIPE=my_stage1.yaml launch/slurm/stage1.sh --run-dir /lustre/emu3/stage1
#
# Prints the job id. Default recipe: examples/recipes/emu3_8b_stage1.yaml (8 nodes x 8 GPUs).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$HERE/submit.sh" "${STAGE1_RECIPE:-$HERE/../../examples/recipes/emu3_8b_stage1.yaml}" "$@"
