#!/usr/bin/env bash
# Issue 3's GPU checks as one command, for a machine with a CUDA GPU and a python3 that has torch
# (the lent device machine has torch, timm, opencv, pyarrow, tifffile, xxhash, pyyaml, tqdm and
# tensorboard; wheels for the rest travel in .whl/, which .git/info/exclude should list):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl isal pydicom nystrom-attention openpyxl et_xmlfile
#   bash benchmarks/gpu_checks.sh OUT_DIR            # about 4 minutes on an H200
#
# 1. CUDA smoke run: the tiny MIRAM config in one process (run.use_ray=false: LocalSession takes
#    the GPU, autocast in bf16 where the GPU has it) on freshly ingested sample CBIS shards; passes
#    when every epoch's loss is finite, a checkpoint was written, and the validation passes (every
#    2nd epoch and the last: autocast, the GPU's generator forked) gave finite losses and pictures.
# 2. to_device on the GPU gives the CPU's normalisation and crop resizing (float32), and a
#    2-worker loader with pin_memory (what the trainer asks for on a GPU) hands over pinned batches.
# 3. benchmarks/fine_decoder_attention.py --device cuda --full-miram --batches 64 256 --amp: a whole
#    MIRAM ViT-B/16 training step's time and peak memory per fine-decoder attention (Table II).
# 4. fp16 (what run.precision=auto picks on a V100, which has no bf16: autocast with a GradScaler)
#    for 2 epochs on the GPU, then `--resume optim.epochs=4` on the GPU (optimizer moments and the
#    scaler's state loaded onto it), then trainer/export_encoder.py on the CPU from that GPU
#    checkpoint; passes when every epoch's loss is finite, the run's last checkpoint is epoch 4's
#    at step 12, the scaler's scale is a finite power of two, and the exported encoder loads on the CPU.
# 5. benchmarks/method_step.py --device cuda --batch 64: every method's step time and peak memory.
#
# GPU_CHECKS_DEVICE=cpu runs 1 and 2 on the CPU and skips 3: a dry run of this script anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/gpu-checks}
device=${GPU_CHECKS_DEVICE:-cuda}
py=${PYTHON:-python3}
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
if [ -d .whl ] && [ "$device" = cuda ]; then  # wheels for the device machine's python
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/runs" "$out/shards"
[ -f "$out/cbis/metadata.csv" ] || "$py" -m ingest.cli sample-data cbis "$out/cbis" --patients 12 --seed 0
"$py" -m ingest.cli cbis "$out/cbis" --crops lesion --out "$out/shards" --shard-size 4 --no-progress
gpu=true
if [ "$device" != cuda ]; then
    gpu=false
    export CUDA_VISIBLE_DEVICES=""  # LocalSession takes a GPU whenever torch sees one
fi
"$py" trainer/pretrain.py --config trainer/configs/tiny_cpu.yaml "data.sources=[{root: $out/shards}]" \
    "run.storage_path=$out/runs" run.use_ray=false "run.use_gpu=\"$gpu\"" \
    validation.every_epochs=2 validation.batch_size=2 2>&1 | tee "$out/smoke.log"
"$py" - "$out" "$device" <<'EOF'
import csv, json, math, sys
from pathlib import Path

import numpy as np
import torch

from shards.stream_stages import to_device

out, device = Path(sys.argv[1]), sys.argv[2]
run = out / "runs" / "tiny-cpu"
rows = list(csv.DictReader(open(run / "epochs.csv")))
losses = [float(row["loss"]) for row in rows]
val_losses = [float(row["val_loss"]) for row in rows if row.get("val_loss")]  # every 2nd epoch and the last
checkpoints = sorted((run / "checkpoints").glob("epoch_*"))
assert losses and all(math.isfinite(x) for x in losses), losses
assert len(val_losses) == 2 and all(math.isfinite(x) for x in val_losses), val_losses
assert sorted(p.name for p in (run / "images").glob("val_epoch_*.png")) == ["val_epoch_0002.png", "val_epoch_0004.png"]
assert checkpoints, f"no checkpoint under {run}"
if device == "cuda":
    assert torch.cuda.is_available(), "GPU_CHECKS_DEVICE=cuda but torch sees no GPU"
rng = np.random.default_rng(0)
batch = {"image": torch.from_numpy(rng.integers(0, 65536, (8, 1, 64, 64)).astype(np.uint16)),
         "pixel_mean": rng.uniform(1000, 30000, (8, 1)).astype(np.float32),
         "pixel_scale": (1 / rng.uniform(500, 9000, (8, 1))).astype(np.float32),
         # half the rows hold a crop left for the device to enlarge (shards.device_crops), some flipped
         "resize_from": np.array([[64, 64], [40, 50], [64, 64], [13, 64], [64, 64], [64, 9], [64, 64], [30, 30]],
                                 np.int32),
         "flip": np.array([False, True, True, False, False, True, True, False])}
cpu = to_device(dict(batch), "cpu")["image"]
moved = to_device(dict(batch), device)["image"]
assert moved.device.type == device and moved.dtype == torch.float32
torch.testing.assert_close(moved.cpu(), cpu, rtol=1e-5, atol=1e-4)
pinned = None
if device == "cuda":  # the trainer's GPU path: worker batches copied out of the ring into pinned memory
    from shards.stream import StreamSource, make_loader
    loader, _ = make_loader([StreamSource(out / "shards")], batch_size=4, image_size=64, num_workers=2,
                            pin_memory=True, samples_per_epoch=8, resize_on_device=True)
    batches = list(loader)
    pinned = all(b["image"].is_pinned() for b in batches)
    assert pinned and len(batches) == 2, [b["image"].is_pinned() for b in batches]
    to_device(batches[0], "cuda")
    torch.cuda.synchronize()
print(json.dumps({"check": "gpu_smoke", "device": device,
                  "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                  "epoch_losses": [round(x, 4) for x in losses], "val_losses": [round(x, 4) for x in val_losses],
                  "checkpoints": len(checkpoints),
                  "to_device_matches_cpu": True, "loader_batches_pinned": pinned}))
EOF
if [ "$device" = cuda ]; then
    fp16=(--config trainer/configs/tiny_cpu.yaml "data.sources=[{root: $out/shards}]" "run.storage_path=$out/runs"
          run.use_ray=false 'run.use_gpu="true"' run.name=tiny-fp16 run.precision=fp16)
    "$py" trainer/pretrain.py "${fp16[@]}" optim.epochs=2 2>&1 | tee "$out/fp16.log"
    "$py" trainer/pretrain.py "${fp16[@]}" --resume optim.epochs=4 2>&1 | tee -a "$out/fp16.log"
    CUDA_VISIBLE_DEVICES="" "$py" trainer/export_encoder.py "$out/runs/tiny-fp16" --out "$out/encoder-fp16.safetensors"
    "$py" - "$out" <<'EOF'
import csv, json, math, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

out = Path(sys.argv[1])
run = out / "runs" / "tiny-fp16"
rows = list(csv.DictReader(open(run / "epochs.csv")))
assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2, 3], [r["epoch"] for r in rows]
losses = [float(r["loss"]) for r in rows]
assert all(math.isfinite(x) for x in losses), losses
state = torch.load(run / "checkpoints" / "epoch_0003" / "checkpoint.pt", map_location="cpu", weights_only=True)
scale = float(state["scaler"]["scale"])
assert state["epoch"] == 3 and state["step"] == 12, (state["epoch"], state["step"])
assert math.isfinite(scale) and math.log2(scale).is_integer(), scale
encoder = load_file(str(out / "encoder-fp16.safetensors"))
assert encoder and all(torch.isfinite(t.float()).all() for t in encoder.values())
print(json.dumps({"check": "gpu_fp16_resume", "epoch_losses": [round(x, 4) for x in losses],
                  "grad_scale": scale, "encoder_tensors": len(encoder)}))
EOF
    "$py" benchmarks/method_step.py --device cuda --batch 64 --steps 5 | tee "$out/method_step.jsonl"
    "$py" benchmarks/fine_decoder_attention.py --device cuda --full-miram --batches 64 256 --amp \
        | tee "$out/full_miram.jsonl"
fi
