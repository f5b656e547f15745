#!/usr/bin/env bash
# The main job on an embedded default, in minutes on 2 CPU cores with 2 ranks (make demo runs it).
# Today: the tiny Emu3 (full 184,622-token vocab) trained on the synthetic stream with
# tensor parallel 2 over gloo, then the loss curve plotted. Later stages of the pipeline
# (preprocessing, stage 1 -> stage 2, HF export, sampling) extend this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEMO_DIR="${DEMO_DIR:-runs/demo}"
NPROC="${NPROC:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

echo "== training tiny Emu3 on $NPROC ranks (synthetic data) -> $DEMO_DIR/train"
"$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m megatron_emu3.train \
    --config examples/recipes/tiny.yaml run_dir="$DEMO_DIR/train" parallel.tp=2 train.iters=40

"$PY" tools/plot_loss.py "$DEMO_DIR/train" --out "$DEMO_DIR/loss.png"
"$PY" - "$DEMO_DIR/train" <<'PYEOF'
import json, sys
records = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
first, last = records[0]["loss"], records[-1]["loss"]
print(f"loss {first:.3f} -> {last:.3f} over {len(records)} steps")
if not last < first:
    sys.exit("demo: the loss did not fall")
PYEOF
echo "demo finished: metrics in $DEMO_DIR/train/metrics.jsonl, plot in $DEMO_DIR/loss.png"
