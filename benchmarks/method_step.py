"""Step time and peak memory of every registered method at its paper's input size, batch 8.

One JSON line per method: forward + backward + AdamW step, the median of `--steps` timed steps
after one warm-up. Each method runs in a fresh subprocess, so peak memory is its own: on CPU the
peak resident set of that process (ru_maxrss, which includes the interpreter and libraries: the
`baseline_rss_mib` line is that floor), on a GPU torch's peak allocated memory.

    python benchmarks/method_step.py [--device cpu|cuda] [--batch 8] [--steps 3] [--only dama,tower]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# family -> (channels, image side) of the data its paper pretrains on
PAPER_INPUT = {
    "mae": (1, 224),      # MIRAM paper's mammogram crops, MAE at 224
    "miram": (1, 224),    # paper 000: fine scale 224, encoder sees 112
    "dama": (7, 128),     # paper 004: 128x128x7 brain-cell crops
    "tower": (3, 512),    # paper 001 §4.1: DRIVE fundus resized to 512
    "mlvicx": (1, 224),   # paper 002: chest X-ray
    "pcrlv2": (1, 224),   # paper 003, 2D: chest X-ray
    "simclr": (1, 224),
    "simsiam": (1, 224),
    "vicreg": (1, 224),
}


def measure(name: str, device: str, batch: int, steps: int) -> dict:
    import torch

    from trainer.registry import build_method

    family = name.split("_")[0]
    chans, size = PAPER_INPUT[family]
    torch.manual_seed(0)
    model = build_method(name, img_size=size, in_chans=chans).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, chans, size, size, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model({"image": images})["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"method": name, "device": device, "batch": batch, "in_chans": chans, "img_size": size,
            "step_s": round(statistics.median(times), 4), "peak_mib": round(peak, 1),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated method families")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one method in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.device, args.batch, args.steps)))
        return
    from trainer.registry import method_names

    families = set(filter(None, args.only.split(",")))
    names = [n for n in method_names() if "tiny" not in n and (not families or n.split("_")[0] in families)]
    floor = subprocess.run([sys.executable, "-c", "import resource, torch, timm; "
                            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                           capture_output=True, text=True, check=True)
    print(json.dumps({"baseline_rss_mib": round(float(floor.stdout), 1), "host": platform.node(),
                      "python": platform.python_version()}), flush=True)
    for name in names:
        done = subprocess.run([sys.executable, __file__, "--one", name, "--device", args.device,
                               "--batch", str(args.batch), "--steps", str(args.steps)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(json.dumps({"method": name, "error": done.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
