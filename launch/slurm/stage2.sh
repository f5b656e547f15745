#!/usr/bin/env bash
# Stage 2 (+ video, context 131,072): submit.sh with the stage-2 recipe, starting from the model
# weights of a stage-1 run (new optimizer, schedule and step 0).
#
#   launch/slurm/stage2.sh --weights-from STAGE1_RUN_DIR [--after STAGE1_JOBID] [submit.sh options] [-- key=value ...]
#
# Prints the job id. Default recipe: examples/recipes/emu3_8b_stage2.yaml (16 nodes x 8 GPUs).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case " $* " in
    *" --weights-from "*) ;;
    *) echo "stage2.sh: give --weights-from STAGE1_RUN_DIR (the stage-1 run directory)" >&2; exit 2 ;;
esac
exec "$HERE/submit.sh" "${STAGE2_RECIPE:-$HERE/../../examples/recipes/emu3_8b_stage2.yaml}" "$@"
