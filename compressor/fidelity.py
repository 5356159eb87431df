"""Perceptual fidelity to the teacher: the judge's distances in units of the teacher's own variation, and grades.

A style network's texture follows the pixel grid, so pixel PSNR cannot tell a
faithful copy from a different picture (the teacher's own output for the photo
moved 2 px scores ~14 dB). The judge (``compressor.judge``) can; its raw
distances are calibrated per teacher and style on the held-out photos:

- **band**: how far the teacher's output moves under input changes no eye
  sees (the photo re-saved as JPEG q95; ±1 grey level of noise), the larger of
  the two per photo, averaged. 1.0 band = as far as the teacher from itself.
- **shift**: the teacher's own change when the photo moves by 2 px (compared
  after moving it back): a camera that moved. A variant no farther than that
  paints what the teacher itself might have painted.

A third distance, the judge's style ``vector`` (the predictor's 100-d
summary, past every tap), is the independent check: distillation through the
judge trains on its features and Grams, never on the vector, so a student that
merely fitted the judge's taps still has to reach its grade there.

Grades: *indistinguishable* within the band on all three distances, *close*
within the shift on all three, else *different* (``benchmarks/bench_judge.py``
shows the ladder these limits sit on).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from compressor.errors import UserError
from compressor.images import resize
from compressor.judge import (
    JUDGE_DESCRIPTION,
    JUDGE_NAME,
    PERCEPTUAL_TAPS,
    STYLE_TAPS,
    TAPS,
    Embedding,
    embed,
    perceptual_distance,
    style_distance,
    vector_distance,
)

DISTANCES = ("perceptual", "style", "vector")
GRADES = ("indistinguishable", "close", "different")
SHIFT_PX = 2
NOISE_SEED = 0


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """A (1, 3, H, W) image saved as JPEG at ``quality`` and read back."""
    array = (image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1)[None].float() / 255


def grey_level_noise(image: torch.Tensor, seed: int = NOISE_SEED) -> torch.Tensor:
    """Every pixel moved by -1, 0 or +1 grey level (of 255), seeded."""
    gen = torch.Generator().manual_seed(seed)
    return (image + torch.randint(-1, 2, image.shape, generator=gen) / 255).clamp(0, 1)


def shift(image: torch.Tensor, pixels: int) -> torch.Tensor:
    """The picture moved right by ``pixels`` (left when negative), the edge column repeated into the gap."""
    if pixels >= 0:
        return F.pad(image, (pixels, 0, 0, 0), mode="replicate")[..., :image.shape[-1]]
    return F.pad(image, (0, -pixels, 0, 0), mode="replicate")[..., -pixels:]


SAME_PICTURE = {"jpeg_q95": lambda x: jpeg_roundtrip(x, 95), "noise_1_grey_level": grey_level_noise}


def distances(candidate: Embedding, reference: Embedding) -> dict[str, float]:
    return {"perceptual": float(perceptual_distance(candidate, reference)),
            "style": float(style_distance(candidate, reference)),
            "vector": float(vector_distance(candidate, reference))}


@torch.no_grad()
def calibrate(teacher: Callable[[torch.Tensor], torch.Tensor], photos: list[torch.Tensor],
              outputs: list[torch.Tensor], references: list[Embedding]) -> dict[str, Any]:
    """The teacher's band and shift yardstick (raw distances) over ``photos``, given its ``outputs`` on them, and
    each photo's own (``per_photo``: the yardstick differs widely from photo to photo, benchmarks/README.md)."""
    band = {d: [] for d in DISTANCES}
    moved = {d: [] for d in DISTANCES}
    for photo, reference in zip(photos, references):
        same = [distances(embed(teacher(change(photo)).clamp(0, 1)), reference) for change in SAME_PICTURE.values()]
        for d in DISTANCES:
            band[d].append(max(s[d] for s in same))
        back = shift(teacher(shift(photo, SHIFT_PX)).clamp(0, 1), -SHIFT_PX)
        for d, value in distances(embed(back), reference).items():
            moved[d].append(value)
    return {"band": {d: float(np.mean(v)) for d, v in band.items()},
            "shift": {d: float(np.mean(v)) for d, v in moved.items()},
            "same_picture": list(SAME_PICTURE), "shift_px": SHIFT_PX, "photos": len(photos),
            "per_photo": [{"band": {d: float(band[d][i]) for d in DISTANCES},
                           "shift": {d: float(moved[d][i]) for d in DISTANCES}} for i in range(len(photos))]}


def in_bands(raw: dict[str, float], calibration: dict[str, Any]) -> dict[str, float]:
    """Raw distances in units of the band (a band of 0, a constant teacher, leaves the raw distance)."""
    return {d: raw[d] / calibration["band"][d] if calibration["band"][d] > 0 else raw[d] for d in DISTANCES}


def grade(bands: dict[str, float], calibration: dict[str, Any]) -> str:
    """indistinguishable (within the band on all distances), close (within the 2-px shift on all), else different."""
    if all(bands[d] <= 1.0 for d in DISTANCES):
        return "indistinguishable"
    shift_bands = in_bands(calibration["shift"], calibration)
    if all(bands[d] <= max(shift_bands[d], 1.0) for d in DISTANCES):
        return "close"
    return "different"


def judgement(items: list[dict[str, float]], calibration: dict[str, Any]) -> dict[str, Any]:
    """Mean raw distances of ``items`` (per photo), the same in bands, and their grade."""
    raw = {d: float(np.mean([i[d] for i in items])) for d in DISTANCES}
    bands = in_bands(raw, calibration)
    return raw | {f"{d}_bands": v for d, v in bands.items()} | {"grade": grade(bands, calibration)}


def judge_outputs(outputs: list[torch.Tensor], references: list[Embedding], calibration: dict[str, Any]
                  ) -> dict[str, Any]:
    """``judgement`` of pictures (each clamped to [0, 1]) against the embedded references, photo by photo."""
    return judgement([distances(embed(o.clamp(0, 1)), r) for o, r in zip(outputs, references)], calibration)


def worst_grade(grades: list[str]) -> str:
    return max(grades, key=GRADES.index)


def degenerate(outputs: list[torch.Tensor]) -> str | None:
    """Why the teacher's pictures cannot anchor a judgement (near-constant or mostly black), or None."""
    spread = float(np.mean([float(o.std()) for o in outputs]))
    dark = float(np.mean([float((o.max(dim=1).values < 0.05).float().mean()) for o in outputs]))
    if spread < 0.02:
        return f"the teacher's output is near-constant (pixel std {spread:.4f}): is it a trained network?"
    if dark > 0.5:
        return f"the teacher's output is mostly black ({100 * dark:.0f}% of pixels): is it a trained network?"
    return None


def judge_info() -> dict[str, Any]:
    """What judged: the network and how its three distances are formed (every report names it)."""
    return {
        "network": JUDGE_NAME,
        "description": JUDGE_DESCRIPTION,
        "perceptual": f"unit-normalised features, mean squared distance, taps at strides "
                      f"{[TAPS[i][1] for i in PERCEPTUAL_TAPS]}",
        "style": f"relative Gram distance, taps at strides {[TAPS[i][1] for i in STYLE_TAPS]}",
        "vector": "relative distance of the 100-d style vectors (the independent check: never a training loss)",
        "grades": {"indistinguishable": "within the teacher's same-picture band on all three distances",
                   "close": f"within the teacher's own change when the photo moves {SHIFT_PX} px, on all three",
                   "different": "farther than that on any"},
    }


def image_pairs(reference: Path, candidate: Path) -> list[tuple[Path, Path]]:
    """(reference image, candidate image) pairs: two files, or the same-named images of two folders."""
    from compressor.data import list_images

    if reference.is_dir() != candidate.is_dir():
        raise UserError(candidate, "give images for an image reference and folders for a folder reference",
                        "pair like with like")
    if not reference.is_dir():
        return [(reference, candidate)]
    theirs = {p.name: p for p in list_images(candidate)}
    pairs = [(p, theirs.get(p.name)) for p in list_images(reference)]
    missing = [r.name for r, c in pairs if c is None]
    if missing:
        raise UserError(candidate, f"no image named {missing[0]} (the reference folder has it)",
                        "give folders of same-named images")
    return pairs


@torch.no_grad()
def judge_files(reference: Path, candidates: list[Path], teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
                photos: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """The judge's distances of each candidate (image or folder) from ``reference``; with a ``teacher`` (a stylizer)
    and its ``photos``, also the teacher's band and shift on them, each distance in bands and a grade."""
    from compressor.data import load_image

    result: dict[str, Any] = {"judge": JUDGE_NAME, "judge_description": JUDGE_DESCRIPTION, "candidates": []}
    calibration = None
    if teacher is not None and photos:
        outputs = [teacher(p).clamp(0, 1) for p in photos]
        calibration = calibrate(teacher, photos, outputs, [embed(o) for o in outputs])
        result["calibration"] = calibration
    cache: dict[Path, Embedding] = {}
    for candidate in candidates:
        per_image = []
        for ref_path, cand_path in image_pairs(reference, candidate):
            ref = load_image(ref_path)[None]
            if ref_path not in cache:
                cache[ref_path] = embed(ref)
            cand = resize(load_image(cand_path)[None], ref.shape[-2:])
            per_image.append({"image": ref_path.name} | distances(embed(cand), cache[ref_path]))
        entry: dict[str, Any] = {"path": str(candidate)}
        entry |= {d: sum(p[d] for p in per_image) / len(per_image) for d in DISTANCES}
        if calibration is not None:
            bands = in_bands(entry, calibration)
            entry |= {f"{d}_bands": v for d, v in bands.items()} | {"grade": grade(bands, calibration)}
        if len(per_image) > 1:
            entry["per_image"] = per_image
        result["candidates"].append(entry)
    return result
