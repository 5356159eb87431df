"""What L1 channel pruning buys: MACs, parameters and torch eager latency, side by side in one run.

TransformerNet and the VGG19 loss network (to relu4_1 and to relu5_1, taps
kept or projected) at 0/25/50/75 % pruning, timed at 256 and 512 px after a
warm-up, median and p90 of many runs, fixed thread count.

    python benchmarks/bench_prune.py [--quick] [--out benchmarks/results/prune.json]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from compressor.config import PruneStage
from compressor.io import write_json
from compressor.models import TransformerNet, VGG19Spec, load_vgg19
from compressor.prune import prune_model

VGG_TO_RELU4_1 = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]
VGG_TO_RELU5_1 = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]


def base_models() -> tuple[dict[str, tuple[torch.nn.Module, str]], str]:
    """Unpruned networks and the vgg_mode each is pruned with; plus the VGG weights source."""
    vgg4 = load_vgg19("imagenet", VGG19Spec(taps=VGG_TO_RELU4_1), allow_fallback=True)
    vgg5 = load_vgg19("imagenet", VGG19Spec(taps=VGG_TO_RELU5_1), allow_fallback=True)
    torch.manual_seed(0)
    models = {
        "transformer_net": (TransformerNet().eval(), "keep_taps"),
        "vgg19_relu4_1_keep_taps": (vgg4, "keep_taps"),
        "vgg19_relu4_1_project_taps": (vgg4, "project_taps"),
        "vgg19_relu5_1_keep_taps": (vgg5, "keep_taps"),
        "vgg19_relu5_1_project_taps": (vgg5, "project_taps"),
    }
    return models, vgg4.weights_source


@torch.inference_mode()
def latency_ms(model: torch.nn.Module, x: torch.Tensor, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prune.json"))
    parser.add_argument("--quick", action="store_true", help="64 px, ratios 0 and 0.5, 3 runs: a smoke run.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    sizes, ratios, runs, warmup = ([64], [0.0, 0.5], 3, 1) if args.quick else ([256, 512], [0.0, 0.25, 0.5, 0.75],
                                                                             args.runs, args.warmup)
    torch.set_num_threads(args.threads)
    models, vgg_source = base_models()
    rows = []
    for name, (base, vgg_mode) in models.items():
        for ratio in ratios:
            model = prune_model(copy.deepcopy(base), PruneStage(ratio=ratio, vgg_mode=vgg_mode)).eval()
            for size in sizes:
                x = torch.rand(1, 3, size, size)
                macs, params = tp.utils.count_ops_and_params(model, x)
                times = latency_ms(model, x, warmup, runs)
                rows.append({
                    "model": name, "ratio": ratio, "size": size, "params": int(params), "macs": int(macs),
                    "median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)),
                    "widths": [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)],
                })
                print(f"  {name} ratio={ratio} {size}px: {rows[-1]['median_ms']:.1f} ms", flush=True)
    for row in rows:
        base_row = next(r for r in rows if r["model"] == row["model"] and r["size"] == row["size"] and r["ratio"] == 0)
        row["speedup"] = base_row["median_ms"] / row["median_ms"]
        row["macs_ratio"] = row["macs"] / base_row["macs"]
    result = {
        "benchmark": "prune", "quick": args.quick, "threads": args.threads, "runs": runs, "warmup": warmup,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "vgg_weights": vgg_source, "transformer_net_weights": "random init (seed 0); latency does not depend on it",
        "note": "projection 1x1 convs of project_taps are not in the forward pass (distillation only)",
        "table": rows,
    }
    write_json(args.out, result)
    print(f"\n{'model':28} {'ratio':>5} {'size':>5} {'params':>11} {'GMACs':>8} {'MACs%':>6} "
          f"{'median ms':>10} {'p90 ms':>8} {'speedup':>7}")
    for r in rows:
        print(f"{r['model']:28} {r['ratio']:>5.2f} {r['size']:>5} {r['params']:>11,} {r['macs'] / 1e9:>8.2f} "
              f"{r['macs_ratio']:>6.1%} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} {r['speedup']:>7.2f}")
    print(f"\nthreads={args.threads} runs={runs} warmup={warmup} VGG weights: {vgg_source}; written to {args.out}")


if __name__ == "__main__":
    main()
