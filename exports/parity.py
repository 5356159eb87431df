"""Parity of an artifact against its PyTorch model on real (held-out) images."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from compressor.data import load_image, sample_content_paths, sample_style_path
from compressor.images import resize
from compressor.losses import psnr
from exports.common import graph_inputs, io_names

# Minimum PSNR (dB) per precision; the quantization stage adds its own entries (e.g. "int8").
PARITY_THRESHOLDS_DB: dict[str, float] = {"fp32": 45.0, "fp16": 35.0}
PSNR_CAP_DB = 200.0  # identical outputs: report a finite number so the manifest stays strict JSON


def parity_inputs(model: nn.Module, size: tuple[int, int]) -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    """(label, NCHW inputs) per bundled eval image, resized to the export size; a second image input (AdaIN)
    gets the bundled style, a style input (multistyle weights, arbitrary vector) the family's example."""
    def resized(path) -> torch.Tensor:
        return resize(load_image(path).unsqueeze(0), size)

    extra = tuple(resized(sample_style_path("starry_night")) if x.dim() == 4 else x for x in graph_inputs(model)[1:])
    return [(p.name, (resized(p), *extra)) for p in sample_content_paths("eval")]


def _as_list(out, names: list[str]) -> list[np.ndarray]:
    if isinstance(out, dict):
        return [np.asarray(out[n]) for n in names]
    if isinstance(out, torch.Tensor):
        return [out.detach().numpy()]
    return [np.asarray(out)]


def parity(
    model: nn.Module,
    runner,
    precision: str,
    size: tuple[int, int],
    threshold_db: float | None = None,
) -> dict:
    """PSNR and max abs error of ``runner`` vs ``model`` on real images, and the pass/fail verdict.

    Images use a peak of 1 (their [0, 1] range); feature outputs (VGG taps)
    use the reference output's own range as the peak. The worst output and
    image decide.
    """
    threshold = PARITY_THRESHOLDS_DB[precision] if threshold_db is None else threshold_db
    _, out_names = io_names(model)
    worst_psnr, max_abs, per_image = math.inf, 0.0, []
    ref_range = [math.inf, -math.inf]
    for label, inputs in parity_inputs(model, size):
        with torch.no_grad():
            ref = _as_list(model(*inputs), out_names)
        got = _as_list(runner(*[x.numpy() for x in inputs]), out_names)
        psnrs = []
        for name, r, g in zip(out_names, ref, got):
            if r.shape != g.shape:
                raise ValueError(f"output {name}: artifact shape {g.shape} vs PyTorch {r.shape}")
            peak = 1.0 if name == "stylized" else float(r.max() - r.min()) or 1.0
            value = psnr(torch.from_numpy(np.asarray(g, np.float64)), torch.from_numpy(r.astype(np.float64)), peak)
            psnrs.append(min(PSNR_CAP_DB, value))
            max_abs = max(max_abs, float(np.abs(r - g).max()))
            ref_range = [min(ref_range[0], float(r.min())), max(ref_range[1], float(r.max()))]
        per_image.append({"image": label, "psnr_db": round(min(psnrs), 2)})
        worst_psnr = min(worst_psnr, min(psnrs))
    return {
        "runtime": getattr(runner, "runtime", "unknown"),
        "images": per_image,
        "psnr_db": round(worst_psnr, 2),
        "max_abs_error": max_abs,
        "threshold_db": threshold,
        "passed": worst_psnr >= threshold,
        "reference_output_range": ref_range,
    }
