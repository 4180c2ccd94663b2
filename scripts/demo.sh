#!/usr/bin/env bash
# The main job on the embedded default: generate the small CBIS-DDSM-shaped sample (TCIA download
# layout), ingest lesion crops into shards, verify them and draw a preview.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
bin=.venv/bin
demo=out/demo
sample=$demo/cbis-ddsm-sample
shards=$demo/shards/cbis-lesion
if [ ! -f "$sample/metadata.csv" ]; then
    "$bin/ingest" sample-data cbis "$sample" --patients 12 --seed 0
fi
"$bin/ingest" cbis "$sample" --crops lesion --out "$shards" --overwrite --shard-size 4  # small shards: every reader of the 2-worker run needs its own
"$bin/shards" verify "$shards"
"$bin/shards" preview "$shards" --split train -n 16 --out "$demo/cbis-lesion-preview.png"
# A short MIRAM pretraining on those shards with an embedded local Ray (2 CPU workers).
rm -rf "$demo/runs/tiny-cpu"
# Every other epoch and after the last, the loss on the val split (a single batch of its 2 samples
# here); the checkpoints kept are those of the lowest val_loss, and the newest.
"$bin/python" trainer/pretrain.py --config trainer/configs/tiny_cpu.yaml \
    "data.sources=[{root: $PWD/$shards}]" "run.storage_path=$PWD/$demo/runs" \
    validation.every_epochs=2 validation.batch_size=2 run.keep_by=val_loss
# The pretrained encoder of the checkpoint with the lowest val_loss, for fine-tuning with timm.
"$bin/python" trainer/export_encoder.py "$demo/runs/tiny-cpu" --best --out "$demo/encoder/miram-tiny.safetensors"
# How well its frozen features predict MIRAM's 4-class target (a linear probe; a few minutes of
# pretraining on 12 made-up patients says little, a real run's probe says how pretraining went).
"$bin/python" trainer/linear_probe.py "$demo/encoder/miram-tiny.safetensors" --data "$shards" --label class4 \
    --out "$demo/probe-class4.json" --no-progress
echo
echo "shards:      $shards/{train,val,test}/shard-*.tar  (manifest.parquet, dataset.json beside them)"
echo "preview:     $demo/cbis-lesion-preview.png"
echo "inspect:     $bin/shards ls $shards"
echo "pretraining: $demo/runs/tiny-cpu/  (checkpoint_*/, epochs.csv with val_loss, steps.csv, tensorboard/, images/*.png)"
echo "encoder:     $demo/encoder/miram-tiny.safetensors  (timm weights; miram-tiny.json says how to load them)"
echo "probe:       $demo/probe-class4.json  (linear probe of the frozen encoder on class4)"
