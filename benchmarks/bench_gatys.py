"""Gatys iterations/s with the full VGG19 loss network vs pruned ones, side by side in one run.

Each pruned network keeps its tap widths (``keep_taps``) so it plugs into the
same losses; the result image of each is judged by the full network, so the
table shows what the speed costs in loss. Random-init VGG19 offline: speed
does not depend on the weights, quality numbers say which network judged.

    python benchmarks/bench_gatys.py --quick   # 128 px, a few steps
    python benchmarks/bench_gatys.py           # 256 px
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from compressor.config import PruneStage
from compressor.data import load_image, sample_content_paths, sample_style_path
from compressor.gatys import GatysConfig, stylize_gatys
from compressor.io import write_json
from compressor.losses import LossWeights, StyleTransferLoss, style_grams
from compressor.models import load_vgg19
from compressor.prune import prune_model

RESULTS = Path(__file__).parent / "results"
RATIOS = (0.0, 0.5, 0.75)


def run(quick: bool) -> dict:
    size, steps = (128, 5) if quick else (256, 30)
    torch.set_num_threads(2)
    reference = load_vgg19("imagenet", allow_fallback=True)
    content = load_image(sample_content_paths("eval")[0], size=size).unsqueeze(0)
    style = load_image(sample_style_path(), size=size).unsqueeze(0)
    judge = StyleTransferLoss(reference, style_grams(reference, style), LossWeights(tv=0.0))
    rows = []
    for ratio in RATIOS:
        vgg = copy.deepcopy(reference)
        if ratio:
            prune_model(vgg, PruneStage(ratio=ratio, vgg_mode="keep_taps", round_to=8))
        vgg.eval().requires_grad_(False)
        config = GatysConfig(steps=steps, optimizer="adam")
        stylize_gatys(content, style_grams(vgg, style), vgg, GatysConfig(steps=2, optimizer="adam"), progress=False)
        start = time.perf_counter()
        image, _ = stylize_gatys(content, style_grams(vgg, style), vgg, config, progress=False)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            judged = judge(image, content)
        rows.append({"vgg19": f"{int(ratio * 100)}% pruned (keep_taps)", "size": size, "steps": steps,
                     "iters_per_s": round(steps / seconds, 2),
                     "params": sum(p.numel() for p in vgg.parameters()),
                     "style_loss_by_full_vgg": float(judged["style"]), "content_loss_by_full_vgg": float(judged["content"])})
    base = rows[0]["iters_per_s"]
    for row in rows:
        row["speedup"] = round(row["iters_per_s"] / base, 2)
    return {"table": rows, "loss_network": reference.weights_source, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.quick)
    out = args.out or RESULTS / f"bench_gatys{'_quick' if args.quick else ''}.json"
    write_json(out, result)
    for row in result["table"]:
        print(row)


if __name__ == "__main__":
    main()
