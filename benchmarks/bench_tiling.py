"""Tiled stylization of big photos: peak memory and time per megapixel, and seam-free quality.

Speed and memory: an upscaled photo of 4, 24 and 100 MP (generated on the fly, 3:2) goes through the
``styleslim stylize`` path (decode once as uint8, thumbnail statistics, tiles chosen for the 2 GB default
budget, uint8 result saved), each size in a fresh process so its VmHWM is that size's peak RSS. One
whole-image run at 1 MP checks the memory model against the measured RSS growth.

Quality: a 2048x1536 photo stylised whole vs in tiles, PSNR and SSIM (torchmetrics) for thumbnail
statistics (several thumbnail sides), per-tile statistics, and the exact (whole-image) statistics with
halos from 0 to the receptive field.

Targets (issue 14): 100 MP with peak RSS <= 2 GB; s/MP within +-20 % from 4 to 100 MP; tiled vs whole
>= 35 dB on 2048x1536. Weights: a seeded random TransformerNet unless ``--model`` names a trained one
(speed and memory do not depend on weights; quality does, so use a trained model for that figure).

    python benchmarks/bench_tiling.py --quick       # 0.5 and 2 MP, 512x384 quality: about a minute
    python benchmarks/bench_tiling.py --model DIR   # the full run; 100 MP takes tens of minutes on 2 cores
    python benchmarks/bench_tiling.py --model DIR --part speed   # one part again, the others kept
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESULTS = Path(__file__).parent / "results"
BUDGET = 2 * 2**30


def _model(path: str | None):
    from compressor.models import TransformerNet, load_model

    if path:
        return load_model(path).eval(), str(path)
    torch.manual_seed(0)
    return TransformerNet().eval(), "TransformerNet, seeded random weights"


def _photo(width: int, height: int) -> Image.Image:
    """The bundled rocket photo (640x427) upscaled and centre-cropped to width x height."""
    from compressor.data import sample_content_paths

    src = Image.open(sample_content_paths("eval")[1]).convert("RGB")
    scale = max(width / src.width, height / src.height)
    big = src.resize((math.ceil(src.width * scale), math.ceil(src.height * scale)), Image.BICUBIC)
    left, top = (big.width - width) // 2, (big.height - height) // 2
    return big.crop((left, top, left + width, top + height))


def _cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine, steadier than wall time."""
    times = os.times()
    return times.user + times.system


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child_speed(image: Path, model_path: str | None, out: Path, whole: bool) -> dict:
    """One size in this (fresh) process: read, plan, tiles, save, as ``styleslim stylize`` does."""
    from compressor.tiling import TileRunner, image_size, read_rgb, save_pixels, stylize_file, to_tensor, to_uint8

    torch.set_num_threads(2)
    runner = TileRunner(_model(model_path)[0])
    height, width = image_size(image)
    plan = runner.plan(height, width, BUDGET, tile=0 if whole else None)
    baseline = _rss("VmRSS")
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if plan.tiled:  # decode, tiles and save, as `styleslim stylize` does
        stylize_file(runner, image, out, plan, progress=False)
    else:
        save_pixels(to_uint8(runner(to_tensor(np.asarray(read_rgb(image))))), out)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    mp = height * width / 1e6
    cells = math.ceil(height / plan.core) * math.ceil(width / plan.core) if plan.tiled else 1
    return {
        "megapixels": round(mp, 1), "size": f"{width}x{height}", "mode": "tiles" if plan.tiled else "whole",
        "window": plan.window, "halo": plan.halo, "thumbnail": plan.thumbnail, "tiles": cells,
        "seconds": round(seconds, 1),
        "s_per_mp": round(seconds / mp, 3),
        "cpu_s_per_mp": round(cpu / mp, 3),
        "peak_rss_mb": round(_rss("VmHWM") / 2**20), "baseline_rss_mb": round(baseline / 2**20),
        "predicted_mb": round(max(runner.memory.bytes_for(plan.window**2), 4.2 * height * width) / 2**20 if plan.tiled
                              else (runner.memory.bytes_for(height * width) + 30 * height * width) / 2**20),
    }


def _in_subprocess(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench_tiling {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed_rows(sizes: list[float], model_path: str | None, whole_mp: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in [whole_mp, *sizes]:
            width = round(math.sqrt(mp * 1e6 * 1.5))
            height = round(width / 1.5)
            image = Path(tmp) / f"photo-{mp}mp.jpg"
            _in_subprocess(["--make", str(image), str(width), str(height)])  # generating it costs memory too
            args = ["--child", str(image), str(Path(tmp) / f"out-{mp}mp.jpg")] + (["--model", model_path]
                                                                                  if model_path else [])
            if mp == whole_mp:
                args.append("--whole")
            rows.append({"case": "whole (memory model check)" if mp == whole_mp else "tiled",
                         **_in_subprocess(args)})
            image.unlink()
            print(rows[-1], flush=True)
    return rows


def quality_rows(model, size: tuple[int, int], thumbnails: list[int], halos: list[int], window: int) -> list[dict]:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from compressor.tiling import TilePlan, TileRunner, stylize_tiled, to_tensor, to_uint8

    runner = TileRunner(model)
    geometry = runner.geometry
    pixels = np.asarray(_photo(*size))
    start = time.perf_counter()
    reference = to_uint8(runner(to_tensor(pixels)))
    whole_s = time.perf_counter() - start
    ref = torch.from_numpy(reference).permute(2, 0, 1)[None].float() / 255

    def row(label: str, plan: TilePlan, per_tile: bool = False) -> dict:
        start = time.perf_counter()
        tiled = stylize_tiled(runner, pixels, plan, per_tile_stats=per_tile, progress=False)
        seconds = time.perf_counter() - start
        got = torch.from_numpy(tiled).permute(2, 0, 1)[None].float() / 255
        psnr = float(peak_signal_noise_ratio(got, ref, data_range=1.0))
        ssim = float(structural_similarity_index_measure(got, ref, data_range=1.0))
        result = {"case": label, "size": f"{size[0]}x{size[1]}", "window": plan.window, "halo": plan.halo,
                  "thumbnail": plan.thumbnail if not per_tile else None, "psnr_db": round(min(psnr, 200.0), 2),
                  "ssim": round(ssim, 5), "seconds": round(seconds, 1), "whole_seconds": round(whole_s, 1)}
        print(result, flush=True)
        return result

    exact = max(size)
    rows = [row(f"thumbnail {t} px", TilePlan(window, geometry.halo, geometry.stride, t)) for t in thumbnails]
    rows.append(row("per-tile statistics", TilePlan(window, geometry.halo, geometry.stride, 0), per_tile=True))
    for halo in halos:
        rows.append(row(f"exact statistics, halo {halo}", TilePlan(window, halo, geometry.stride, exact)))
    return rows


def artifact_rows(model, size: tuple[int, int], window: int) -> list[dict]:
    """A ``window``-px ONNX tile artifact on a photo of ``size``: time, and agreement with torch tiles (thumbnail
    1024, 1024-px windows), against the fixed-shape way (the photo squeezed to the artifact's square and back)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from compressor.tiling import TileRunner, stylize_tiled, to_tensor, to_uint8
    from exports.tile_export import ArtifactTileRunner, export_tile_artifact

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return round(float(peak_signal_noise_ratio(torch.from_numpy(a).float(), torch.from_numpy(b).float(),
                                                   data_range=255.0)), 2)

    pixels = np.asarray(_photo(*size))
    torch_runner = TileRunner(model)
    reference = stylize_tiled(torch_runner, pixels, torch_runner.plan(size[1], size[0], BUDGET, tile=1024),
                              progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        path, manifest = export_tile_artifact(model, "onnx", tmp, size=window)
        runner = ArtifactTileRunner(path)
        plan = runner.plan(size[1], size[0], BUDGET)
        start = time.perf_counter()
        tiled = stylize_tiled(runner, pixels, plan, progress=False)
        seconds = time.perf_counter() - start
        squeezed = to_uint8(runner(to_tensor(pixels)))
    mp = size[0] * size[1] / 1e6
    return [{"case": f"ONNX tile artifact {window}", "size": f"{size[0]}x{size[1]}", "window": plan.window,
             "halo": plan.halo, "tiles": math.ceil(size[1] / plan.core) * math.ceil(size[0] / plan.core),
             "seconds": round(seconds, 1), "s_per_mp": round(seconds / mp, 3),
             "parity_psnr_db": manifest["parity"]["psnr_db"], "psnr_vs_torch_tiles_db": psnr(tiled, reference),
             "squeezed_psnr_vs_torch_tiles_db": psnr(squeezed, reference)}]


PARTS = ("quality", "artifact", "speed")


def run(quick: bool, model_path: str | None = None, parts: tuple[str, ...] = PARTS,
        previous: dict | None = None) -> dict:
    """Every part (or ``parts``, keeping the others from ``previous``, an earlier result of this bench)."""
    torch.set_num_threads(2)
    model, described = _model(model_path)
    from compressor.tiling import TileRunner

    geometry = TileRunner(model).geometry
    found = {p: (previous or {}).get(p, []) for p in PARTS}
    for part in parts:
        if part == "quality":
            found[part] = (quality_rows(model, (512, 384), [128, 256], [0, geometry.halo], window=256) if quick
                           else quality_rows(model, (2048, 1536), [512, 768, 1024], [0, 16, 32, geometry.halo],
                                             window=1024))
        elif part == "artifact":
            found[part] = (artifact_rows(model, (1024, 768), window=256) if quick
                           else artifact_rows(model, (4000, 3000), window=512))
        else:
            found[part] = (speed_rows([0.5, 2.0], model_path, whole_mp=0.25) if quick
                           else speed_rows([4.0, 24.0, 100.0], model_path, whole_mp=1.0))
    return {"model": described, "geometry": {"stride": geometry.stride, "halo": geometry.halo},
            "budget_bytes": BUDGET, **found, "table": found["speed"] + found["quality"] + found["artifact"],
            "targets": targets(found["speed"], found["quality"])}


def targets(speed: list[dict], quality: list[dict]) -> dict:
    found: dict = {"rss_target_mb": 2048, "spread_target": 0.2, "psnr_target_db": 35.0}
    tiled = [r for r in speed if r["case"] == "tiled"]
    if tiled:
        found["peak_rss_mb_at_largest"] = tiled[-1]["peak_rss_mb"]
        for key in ("s_per_mp", "cpu_s_per_mp"):
            found[f"{key}_spread"] = round(max(r[key] for r in tiled) / min(r[key] for r in tiled) - 1, 3)
    thumb = [r for r in quality if r["case"].startswith("thumbnail")]
    if thumb:
        found["thumbnail_psnr_db"] = max(r["psnr_db"] for r in thumb)
        found["per_tile_psnr_db"] = next(r["psnr_db"] for r in quality if r["case"] == "per-tile statistics")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", help="trained model folder (default: seeded random TransformerNet)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--part", action="append", choices=PARTS,
                        help="run only this part (repeatable); the others are kept from the existing --out file")
    parser.add_argument("--make", nargs=3, metavar=("PATH", "W", "H"), help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("IMAGE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        _photo(int(args.make[1]), int(args.make[2])).save(args.make[0], quality=92)
        print("{}")
        return
    if args.child:
        print(json.dumps(child_speed(Path(args.child[0]), args.model, Path(args.child[1]), args.whole)))
        return
    from compressor.io import write_json

    out = args.out or RESULTS / f"bench_tiling{'_quick' if args.quick else ''}.json"
    previous = json.loads(out.read_text()) if args.part and out.is_file() else None
    result = run(args.quick, args.model, tuple(args.part or PARTS), previous)
    write_json(out, result)
    print(json.dumps(result["targets"], indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
