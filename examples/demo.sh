#!/usr/bin/env bash
# The main job on an embedded default, in minutes on 2 CPU cores with 2 ranks (`make demo` runs it):
# synthetic captioned images/videos -> preprocess -> stage 1 (text+image, TP 2) -> stage 2 (+video,
# CP 2, from stage-1 weights) -> checkpoint -> Hugging Face export -> a sampled picture.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEMO_DIR="${DEMO_DIR:-runs/demo}"
NPROC="${NPROC:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# every run shows the whole pipeline: start from an empty demo directory
case "$(realpath -m "$DEMO_DIR")" in
    /|"$HOME"|"$(pwd)") echo "DEMO_DIR=$DEMO_DIR would delete too much; pick a dedicated directory" >&2; exit 2 ;;
esac
rm -rf "${DEMO_DIR:?}"
mkdir -p "$DEMO_DIR"
DEMO_DIR="$(cd "$DEMO_DIR" && pwd)"
export EMU3_DEMO_DATA="$DEMO_DIR/shards"
train() {  # train RECIPE RUN_DIR [overrides...]
    local recipe=$1 run_dir=$2
    shift 2
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m megatron_emu3.train \
        --config "$recipe" run_dir="$run_dir" "$@"
}

echo "== 1/6 synthetic corpus and a tiny random VQ -> $DEMO_DIR/data"
"$PY" examples/make_demo_data.py --out "$DEMO_DIR/data"

echo "== 2/6 preprocess text + images (stage 1) and videos (stage 2) -> $EMU3_DEMO_DATA"
for part in stage1 videos; do
    "$PY" tools/preprocess_data.py --input "$DEMO_DIR/data/$part.jsonl" --output-prefix "$EMU3_DEMO_DATA/$part/shard" \
        --vq-dir "$DEMO_DIR/data/vq" --workers 2 --report "$EMU3_DEMO_DATA/$part/report.json" \
        --min-pixels 4096 --video-min-pixels 4096
done
"$PY" tools/inspect_data.py "$EMU3_DEMO_DATA/stage1/shard" --decode 0 1 2 --vq-dir "$DEMO_DIR/data/vq" \
    --out "$DEMO_DIR/inspect"

echo "== 3/6 stage 1: text + images, tensor parallel 2 -> $DEMO_DIR/stage1"
train examples/recipes/tiny_stage1.yaml "$DEMO_DIR/stage1"

echo "== 4/6 stage 2: + video, context parallel 2, from stage-1 weights -> $DEMO_DIR/stage2"
train examples/recipes/tiny_stage2.yaml "$DEMO_DIR/stage2" checkpoint.load_weights_from="$DEMO_DIR/stage1/checkpoints"

echo "== 5/6 Hugging Face export (Emu3ForConditionalGeneration with the VQ) -> $DEMO_DIR/hf"
"$PY" tools/convert_to_hf.py --checkpoint "$DEMO_DIR/stage2/checkpoints" --output "$DEMO_DIR/hf" \
    --vq-dir "$DEMO_DIR/data/vq" --dtype fp32 --verify

echo "== 6/6 sample a picture from the export -> $DEMO_DIR/sample.png, and from our checkpoint (KV cache)"
"$PY" tools/sample.py --hf "$DEMO_DIR/hf" --prompt "a red circle on the left of a white background" \
    --height 8 --width 8 --top-k 64 --cfg 3.0 --out "$DEMO_DIR/sample.png"
"$PY" tools/generate.py --checkpoint "$DEMO_DIR/stage2/checkpoints" --vq-dir "$DEMO_DIR/data/vq" \
    --prompt "a red circle on the left of a white background" --height 8 --width 8 --top-k 64 --cfg 3.0 \
    --out "$DEMO_DIR/generated.png"

"$PY" tools/plot_loss.py "$DEMO_DIR/stage1" "$DEMO_DIR/stage2" --out "$DEMO_DIR/loss.png"
"$PY" - "$DEMO_DIR" <<'PYEOF'
import json, sys
for stage in ("stage1", "stage2"):
    records = [json.loads(l) for l in open(f"{sys.argv[1]}/{stage}/metrics.jsonl")]
    first, last = records[0], records[-1]
    print(f"{stage}: loss {first['loss']:.3f} -> {last['loss']:.3f} (text {last['text_loss']:.3f}, "
          f"vision {last['vision_loss']:.3f}) over {len(records)} steps")
    if not last["loss"] < first["loss"]:
        sys.exit(f"demo: the {stage} loss did not fall")
PYEOF
echo "demo finished: $DEMO_DIR/{stage1,stage2}/metrics.jsonl, $DEMO_DIR/hf, $DEMO_DIR/{sample,generated,loss}.png"
