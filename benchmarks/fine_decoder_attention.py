"""Time and peak memory of MIRAM's fine decoder per attention variant (paper 000, §II-A-3, Table II).
Prints one JSON line per configuration.

Sequence length. MIRAM's encoder sees 112 x 112 crops and the fine decoder rebuilds 224 x 224
(§IV-A-1), ViT-B/16: the coarse grid is (112/16)^2 = 49 patches, each token is duplicated k = 4
times (eq. 5), so the fine decoder runs on 4 * 49 = (224/16)^2 = 196 patch tokens + 1 cls = 197.
Table II says "on 224 x 224 images"; if that means a 224 encoder input, the fine decoder sees
(448/16)^2 + 1 = 785 tokens: `--input-size 224`.

Default mode: forward + backward on random tokens, for "sdpa", "explicit" softmax and Nystrom with
32/64/128 landmarks, at batch 8 and 64, at two scopes (`--scopes`): "attention", the attention
layer alone (what the variants differ in: the explicit one keeps the (B, heads, L, L) matrices for
backward, SDPA and the linear ones do not), and "block", a stack of `--depth` whole fine-decoder
blocks (width 512, 16 heads, MLP 4x: MAE's decoder, which the fine decoder copies), whose MLP and
norms every variant shares. `--attentions` also takes the paper's other linear variants (Table V),
"linformer<k>" and "performer<features>" (64 when the number is left out). On CPU the default
depth is 1 (the 8-block decoder costs 8x; a 2-core CPU would take minutes per configuration), on
CUDA 8.

`--full-miram`: one whole training step (forward, backward, AdamW) of miram_vit_base_patch16 with
in_chans 1 at `--input-size` in, input and 2x out, per fine attention and batch; `--amp` runs it under
bf16 autocast (CUDA). Table II reports 76 GB (standard) and 44 GB (Nystrom) at batch 64.

Memory, measured honestly per device, each configuration in a fresh subprocess:
  cuda: torch.cuda.max_memory_allocated() during the steps minus memory_allocated() before them
        (tensors only: activations, gradients, optimizer state, workspace; not the caching
        allocator's reserve or the CUDA context); the absolute peak is printed too.
        In --full-miram mode this includes the gradients and the AdamW state made in the first step
        (about 3 x 4 bytes x 136 M parameters = 1.6 GiB in fp32).
  cpu:  the resident-set high-water mark during the timed steps (VmHWM, reset after the warm-up
        through /proc/self/clear_refs) minus the resident set the warm-up left (model, inputs,
        optimizer state): the extra RAM a step needs -- activations kept for backward, gradients,
        workspace. glibc is told to map every allocation over 64 KiB on its own and give it back on
        free, so the resident set follows the live tensors rather than the allocator's reserve.

    python benchmarks/fine_decoder_attention.py                        # CPU, < 3 minutes
    python benchmarks/fine_decoder_attention.py --device cuda          # 8 blocks
    python benchmarks/fine_decoder_attention.py --device cuda --full-miram --batches 64 256 --amp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.heap import return_buffers_to_os  # noqa: E402

DECODER_WIDTH, DECODER_HEADS = 512, 16  # MAE's decoder; MIRAM's fine decoder has the same shape
PATCH = 16


SIZED_ATTENTIONS = ("nystrom", "linformer", "performer")  # take num_landmarks: landmarks, k, features


def parse_attention(name: str) -> tuple[str, int | None]:
    """"sdpa" | "explicit" | "nystrom<landmarks>" | "linformer<k>" | "performer<features>"
    -> (kind, num_landmarks); a sized kind without a number gets 64."""
    for kind in SIZED_ATTENTIONS:
        if name.startswith(kind):
            return kind, int(name[len(kind):] or 64)
    return name, None


def fine_tokens(input_size: int) -> int:
    """Fine-decoder sequence length: (2 * input / 16)^2 patch tokens + cls."""
    return (2 * input_size // PATCH) ** 2 + 1


def build(config: dict):
    """-> (model, make_batch, step_fn) for one configuration."""
    import torch
    from torch import nn

    from trainer.layers.attention import build_attention
    from trainer.layers.vit_block import Block
    from trainer.methods.catalog import METHODS

    device = torch.device(config["device"])
    kind, landmarks = parse_attention(config["attention"])
    if config["full_miram"]:
        model = METHODS["miram_vit_base_patch16"](
            img_size=2 * config["input_size"], in_chans=1, fine_attention=kind, num_landmarks=landmarks or 64
        ).to(device)
        images = torch.randn(config["batch"], 1, 2 * config["input_size"], 2 * config["input_size"], device=device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["amp"]):
                loss = model({"image": images})["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    if config["scope"] == "attention":
        blocks = build_attention(
            kind, dim=DECODER_WIDTH, num_heads=DECODER_HEADS, num_landmarks=landmarks or 64, seq_len=config["tokens"]
        )
    else:
        blocks = nn.Sequential(
            *(
                Block(
                    dim=DECODER_WIDTH,
                    num_heads=DECODER_HEADS,
                    attention=kind,
                    num_landmarks=landmarks or 64,
                    seq_len=config["tokens"],
                )
                for _ in range(config["depth"])
            )
        )
    blocks = blocks.to(device)
    tokens = torch.randn(config["batch"], config["tokens"], DECODER_WIDTH, device=device, requires_grad=True)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["amp"]):
            out = blocks(tokens)
        out.float().square().mean().backward()
        blocks.zero_grad(set_to_none=True)
        tokens.grad = None

    return step


def _status_kib(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(config: dict) -> dict:
    """Run warm-up + timed steps of one configuration in this process; -> result fields."""
    import torch

    cuda = config["device"] == "cuda"
    if not cuda:
        return_buffers_to_os()
    step = build(config)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        sync()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(config["warmup"]):
            step()
        sync()
        if not cuda:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            before = _status_kib("VmRSS")
        start = time.perf_counter()
        for _ in range(config["steps"]):
            step()
        sync()
    except torch.OutOfMemoryError:
        return {"oom": True}
    seconds = (time.perf_counter() - start) / config["steps"]
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
        extra = {"peak_total_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    else:
        peak_mib = (_status_kib("VmHWM") - before) / 1024
        extra = {}
    return {
        "time_per_step_s": round(seconds, 4),
        "time_per_256_samples_s": round(seconds * 256 / config["batch"], 4),
        "peak_mem_mib": round(peak_mib, 1),
        **extra,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--input-size", type=int, default=112, help="encoder input side; the fine decoder rebuilds 2x")
    parser.add_argument("--depth", type=int, default=None, help="fine-decoder blocks (default: 1 on cpu, 8 on cuda)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    parser.add_argument(
        "--attentions", nargs="+", default=["sdpa", "explicit", "nystrom32", "nystrom64", "nystrom128"]
    )
    parser.add_argument("--scopes", nargs="+", choices=["attention", "block"], default=["attention", "block"])
    parser.add_argument("--full-miram", action="store_true", help="whole ViT-B/16 MIRAM training steps")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 2 on cpu, 10 on cuda)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one JSON configuration
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return

    cuda = args.device == "cuda"
    depth = args.depth or (8 if cuda else 1)
    steps = args.steps or (10 if cuda else 2)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    scopes = ["model"] if args.full_miram else args.scopes
    for scope in scopes:
        for attention in args.attentions:
            kind, landmarks = parse_attention(attention)
            for batch in args.batches:
                config = {
                    "mode": "full_miram" if args.full_miram else "fine_decoder",
                    "scope": scope,
                    "device": args.device,
                    "attention": attention,
                    "batch": batch,
                    "input_size": args.input_size,
                    "tokens": fine_tokens(args.input_size),
                    "depth": 8 if args.full_miram else (1 if scope == "attention" else depth),
                    "amp": args.amp,
                    "warmup": args.warmup,
                    "steps": steps,
                    "full_miram": args.full_miram,
                }
                print(json.dumps(run_one(config, env, cuda, landmarks, kind)), flush=True)


def run_one(config: dict, env: dict, cuda: bool, landmarks: int | None, kind: str) -> dict:
    """One configuration in a fresh subprocess (so peak memory is its own) -> its report."""
    run = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True,
                         env=env)
    lines = run.stdout.strip().splitlines()
    if run.returncode or not lines:
        result = {"error": (run.stderr.strip().splitlines() or ["no output"])[-1]}
    else:
        result = json.loads(lines[-1])
    report = {k: v for k, v in config.items() if k not in ("full_miram", "warmup")}
    report.update(num_landmarks=landmarks, kind=kind, **result)
    report["mem_measure"] = (
        "cuda max_memory_allocated minus allocated before the steps"
        if cuda
        else "VmHWM during the timed steps minus VmRSS after warm-up (fresh process, large allocations mapped)"
    )
    return report


if __name__ == "__main__":
    main()
