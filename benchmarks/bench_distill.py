"""Distillation steps/s of the training loop: fp32 vs bf16 autocast (vs fp32 + gradient checkpointing), side by side.

Teacher: the default TransformerNet; student: every width halved (a 50%-pruned
spec). Objective: style + content + TV + output L1 + perceptual, judged by the
reference VGG19 (random-init fallback offline: speed does not depend on weights).
Step time = interval between consecutive steps of ``compressor.distill.train``.

    python benchmarks/bench_distill.py --quick   # 128 px crops, batch 2, a few steps
    python benchmarks/bench_distill.py           # 256 px crops, batch 4
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from compressor.config import TrainConfig
from compressor.data import ContentCrops, load_image, sample_content_paths, sample_style_path
from compressor.distill import default_device, make_objective, train
from compressor.io import write_json
from compressor.losses import style_grams
from compressor.models import TransformerNet, TransformerNetSpec, load_vgg19

RESULTS = Path(__file__).parent / "results"
HALF = TransformerNetSpec(conv1=16, conv2=32, trunk=64, res_inner=[64] * 5, deconv1=32, deconv2=16)
VARIANTS = {"fp32": {}, "bf16 autocast": {"bf16": True}, "fp32 + grad checkpointing": {"grad_checkpointing": True}}


def step_times(config: TrainConfig, vgg, grams, data, device) -> list[float]:
    """Seconds per training step (after ``warmup`` untimed steps are excluded by the caller)."""
    torch.manual_seed(0)
    teacher, student = TransformerNet(TransformerNetSpec()).to(device), TransformerNet(HALF)
    objective = make_objective(student, teacher, config, vgg, grams)
    stamps: list[float] = []

    def timed(model, batch):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return objective(model, batch)

    with tempfile.TemporaryDirectory() as tmp:
        train(student, timed, data, config, tmp, progress=False, device=device)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def bench(quick: bool, steps: int, warmup: int) -> dict:
    crop, batch = (128, 2) if quick else (256, 4)
    device = default_device()
    vgg = load_vgg19("imagenet", allow_fallback=True).to(device)
    grams = style_grams(vgg, load_image(sample_style_path(), 256)[None].to(device))
    data = ContentCrops(sample_content_paths("train"), crop, length=1000)
    rows = []
    for name, options in VARIANTS.items():
        config = TrainConfig(steps=warmup + steps + 1, batch_size=batch, crop=crop, checkpoint_every=10_000,
                             output_weight=1.0, perceptual_weight=1.0, **options)
        times = step_times(config, vgg, grams, data, device)[warmup:]
        median = statistics.median(times)
        rows.append({"variant": name, "median_s_per_step": median, "steps_per_s": 1 / median,
                     "images_per_s": batch / median, "timed_steps": len(times)})
    for row in rows:
        row["speedup_vs_fp32"] = rows[0]["median_s_per_step"] / row["median_s_per_step"]
    return {"benchmark": "bench_distill", "quick": quick, "crop": crop, "batch_size": batch, "device": str(device),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "loss_network": vgg.weights_source, "table": rows}


def run(quick: bool, steps: int | None = None) -> dict:
    """The benchmark-runner entry point (see benchmarks/README.md)."""
    return bench(quick, steps or (3 if quick else 10), warmup=1 if quick else 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 px crops, batch 2, 3 timed steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    doc = run(args.quick, args.steps)
    out = args.out or RESULTS / f"bench_distill{'_quick' if args.quick else ''}.json"
    write_json(out, doc)
    print(f"crop {doc['crop']}, batch {doc['batch_size']}, {doc['device']}, {doc['threads']} threads, "
          f"loss network {doc['loss_network']}")
    print(f"{'variant':28} {'s/step':>8} {'steps/s':>8} {'img/s':>7} {'vs fp32':>8}")
    for r in doc["table"]:
        print(f"{r['variant']:28} {r['median_s_per_step']:>8.3f} {r['steps_per_s']:>8.3f} {r['images_per_s']:>7.2f} "
              f"{r['speedup_vs_fp32']:>7.2f}x")
    print(f"written {out}")


if __name__ == "__main__":
    main()
