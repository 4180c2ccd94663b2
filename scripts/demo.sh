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
"$bin/ingest" cbis "$sample" --crops lesion --out "$shards" --overwrite
"$bin/shards" verify "$shards"
"$bin/shards" preview "$shards" --split train -n 16 --out "$demo/cbis-lesion-preview.png"
echo
echo "shards:   $shards/{train,val,test}/shard-*.tar  (manifest.parquet, dataset.json beside them)"
echo "preview:  $demo/cbis-lesion-preview.png"
echo "inspect:  $bin/shards ls $shards"
