"""Export one model to one format end to end: convert, verify on the runtime, write the manifest.

Used by the ``styleslim export`` command and by the pipeline's export stage.
A failed parity check leaves the artifact and its manifest (verdict: failed)
for inspection and raises ParityError with the numbers.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import save as safetensors_bytes
from torch import nn

from compressor.models import load_model
from compressor.io import file_sha256
from compressor.models.checkpoint import WEIGHTS_FILE
from exports.common import FORMAT_SUFFIX, ExportError, ParityError, example_inputs, io_names
from exports.manifest import versions, write_manifest
from exports.parity import parity
from exports.rewrites import apply_rewrites, format_rewrites

log = logging.getLogger(__name__)
DEFAULT_PRECISION = {"onnx": "fp32", "tflite": "fp32", "coreml": "fp16"}
INPUT_RANGE = [0.0, 1.0]


def artifact_name(fmt: str, precision: str, layout: str) -> str:
    return f"model-{precision}{'-nhwc' if layout == 'nhwc' else ''}{FORMAT_SUFFIX[fmt]}"


def _source(model: nn.Module, model_dir: Path | None) -> dict[str, Any]:
    spec = model.current_spec().model_dump(mode="json")
    if model_dir is not None:
        return {"model_dir": str(model_dir), "spec": spec, "weights_sha256": file_sha256(model_dir / WEIGHTS_FILE)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return {"model_dir": None, "spec": spec, "weights_sha256": hashlib.sha256(safetensors_bytes(state)).hexdigest(),
            "weights_sha256_of": "in-memory state dict serialised as safetensors"}


def export_artifact(
    model: nn.Module | str | Path,
    fmt: str,
    out_dir: str | Path,
    precision: str | None = None,
    size: tuple[int, int] = (256, 256),
    layout: str = "nchw",
    dynamic: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Convert ``model`` (a module or a model folder) to ``fmt`` in ``out_dir``; returns (artifact, manifest)."""
    if fmt not in FORMAT_SUFFIX:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMAT_SUFFIX)}")
    model_dir = None
    if not isinstance(model, nn.Module):
        model_dir = Path(model)
        model = load_model(model_dir)
    model = model.eval()
    precision = precision or DEFAULT_PRECISION[fmt]
    size = (int(size[0]), int(size[1]))
    path = Path(out_dir) / artifact_name(fmt, precision, layout)
    rewritten, rewrites = apply_rewrites(model, format_rewrites(model, fmt), example_inputs(model, size))
    if dynamic and fmt != "onnx":
        raise ExportError(f"dynamic input size is an ONNX option; {fmt} artifacts have a fixed shape")
    log.info("exporting %s %s %s -> %s", type(model).__name__, fmt, precision, path)
    if fmt == "onnx":
        from exports.onnx_export import export_onnx

        if precision != "fp32":
            raise ExportError(f"ONNX export is fp32 (got {precision!r}); reduced-precision ONNX comes from quantize")
        export_onnx(rewritten, path, size, dynamic=dynamic, layout=layout)
    elif fmt == "tflite":
        from exports.tflite_export import export_tflite

        export_tflite(rewritten, path, size, precision=precision, layout=layout, rewrites=())
    else:
        from exports.coreml_export import export_coreml

        export_coreml(rewritten, path, size, precision=precision, layout=layout)
    manifest = describe(model, model_dir, fmt, precision, path, size, layout, dynamic, rewrites)
    manifest["parity"] = verify(model, path, fmt, precision, size, manifest)
    write_manifest(path, manifest)
    verdict = manifest["parity"]
    if verdict.get("passed") is False:
        raise ParityError(
            f"{path}: parity FAILED on {verdict['runtime']}: "
            f"PSNR {verdict['psnr_db']} dB < {verdict['threshold_db']} dB "
            f"({precision}), max abs error {verdict['max_abs_error']:.3g}"
        )
    return path, manifest


def describe(model: nn.Module, model_dir: Path | None, fmt: str, precision: str, path: Path, size: tuple[int, int],
             layout: str, dynamic: bool, rewrites: list[dict]) -> dict[str, Any]:
    in_names, out_names = io_names(model)
    h, w = ("height", "width") if dynamic else size
    shape = [1, 3, h, w] if layout == "nchw" else [1, h, w, 3]
    image_out = out_names == ["stylized"]
    out_range = "nominally [0, 1]; clamp before saving" if image_out else "unbounded features (ReLU >= 0)"
    return {
        "format": fmt,
        "precision": precision,
        "artifact": path.name,
        "source": _source(model, model_dir),
        "style": model.spec.style,
        "layout": layout,
        "inputs": [{"name": n, "shape": shape, "dtype": "float32", "layout": layout, "range": INPUT_RANGE,
                    "color": "RGB"} for n in in_names],
        "outputs": [{"name": n, "dtype": "float32", "layout": layout,
                     "range": out_range}
                    for n in out_names],
        "versions": versions(fmt),
        "rewrites": rewrites,
    }


def verify(model: nn.Module, path: Path, fmt: str, precision: str, size: tuple[int, int], manifest: dict) -> dict:
    """Parity on the artifact's runtime; Core ML off macOS gets a structural check instead."""
    if fmt == "coreml":
        from exports.coreml_export import PREDICTIONS_ON_LINUX, can_predict, inspect_coreml

        structure = inspect_coreml(path)
        check_coreml_structure(structure, manifest, precision, path)
        if not can_predict():
            return {"runtime": "coremltools (structure only)", "predictions": PREDICTIONS_ON_LINUX,
                    "structure": structure, "passed": None, "threshold_db": None}
    from exports.runtime import load_runner

    runner = load_runner(path)
    runner.layout = manifest["layout"]  # the manifest is written after verification
    runner.output_names = [o["name"] for o in manifest["outputs"]]
    return parity(model, runner, precision, size)


def check_coreml_structure(structure: dict, manifest: dict, precision: str, path: Path) -> None:
    """The saved spec has the manifest's I/O names and shapes, and weights in the requested precision."""
    want_in = [(i["name"], i["shape"]) for i in manifest["inputs"]]
    got_in = [(i["name"], i["shape"]) for i in structure["inputs"]]
    want_out = [o["name"] for o in manifest["outputs"]]
    got_out = [o["name"] for o in structure["outputs"]]
    weight = {"fp16": "FLOAT16", "fp32": "FLOAT32"}[precision]
    problems = []
    if got_in != want_in:
        problems.append(f"inputs {got_in} != {want_in}")
    if got_out != want_out:
        problems.append(f"outputs {got_out} != {want_out}")
    if structure["weight_dtypes"] != [weight]:
        problems.append(f"weight dtypes {structure['weight_dtypes']} != [{weight}]")
    if problems:
        raise ExportError(f"{path}: Core ML spec check failed: " + "; ".join(problems))


def export_stage(ctx) -> None:
    """Pipeline stage: export the run's newest float model to every format the recipe asks for."""
    cfg = ctx.recipe.export
    model_dir = ctx.latest_model_dir()
    out_dir = ctx.stage_dir("export")
    for fmt in cfg.formats:
        path, manifest = export_artifact(model_dir, fmt, out_dir, precision=cfg.precision,
                                         size=(cfg.size, cfg.size), layout=cfg.layout)
        p = manifest["parity"]
        log.info("export %s: %s; parity %s", fmt, path, "PSNR %.1f dB" % p["psnr_db"] if "psnr_db" in p
                 else p.get("predictions"))
