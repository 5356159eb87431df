"""Export one model to one format end to end: convert, verify on the runtime, write the manifest.

Used by the ``styleslim export`` command and by the pipeline's export stage.
A failed parity check leaves the artifact and its manifest (verdict: failed)
for inspection and raises ParityError with the numbers.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save as safetensors_bytes
from torch import nn

from compressor.io import atomic_output, file_sha256
from compressor.models import load_model
from compressor.models.checkpoint import WEIGHTS_FILE
from exports.backends import Backend, backend_for_format
from exports.common import ExportError, ParityError, example_inputs, graph_inputs, io_names
from exports.manifest import manifest_problem, read_manifest, versions, write_manifest
from exports.parity import parity
from exports.rewrites import apply_rewrites, format_rewrites

log = logging.getLogger(__name__)
INPUT_RANGE = [0.0, 1.0]


def artifact_name(fmt: str, precision: str, layout: str) -> str:
    return f"model-{precision}{'-nhwc' if layout == 'nhwc' else ''}{backend_for_format(fmt).suffix}"


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
    try:
        backend = backend_for_format(fmt)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    model_dir = None
    if not isinstance(model, nn.Module):
        model_dir = Path(model)
        model = load_model(model_dir)
    model = model.eval()
    precision = precision or backend.default_precision
    size = (int(size[0]), int(size[1]))
    path = Path(out_dir) / artifact_name(fmt, precision, layout)
    rewritten, rewrites = apply_rewrites(model, format_rewrites(model, fmt), example_inputs(model, size))
    log.info("exporting %s %s %s -> %s", type(model).__name__, fmt, precision, path)
    backend.export(rewritten, path, size, precision=precision, layout=layout, dynamic=dynamic)
    try:
        manifest = describe(model, model_dir, backend, precision, path, size, layout, dynamic, rewrites)
        manifest["parity"] = verify(model, path, backend, precision, size, manifest)
        write_manifest(path, manifest)
    except BaseException:  # all or nothing: no artifact without its manifest (a full disk, a crashed verification)
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    verdict = manifest["parity"]
    if verdict.get("passed") is False:
        raise ParityError(
            f"{path}: parity FAILED on {verdict['runtime']}: "
            f"PSNR {verdict['psnr_db']} dB < {verdict['threshold_db']} dB "
            f"({precision}), max abs error {verdict['max_abs_error']:.3g}"
        )
    return path, manifest


def describe(model: nn.Module, model_dir: Path | None, backend: Backend, precision: str, path: Path,
             size: tuple[int, int], layout: str, dynamic: bool, rewrites: list[dict]) -> dict[str, Any]:
    in_names, out_names = io_names(model)
    h, w = ("height", "width") if dynamic else size
    shape = [1, 3, h, w] if layout == "nchw" else [1, h, w, 3]
    image_out = out_names == ["stylized"]
    out_range = "nominally [0, 1]; clamp before saving" if image_out else "unbounded features (ReLU >= 0)"
    return {
        "format": backend.format,
        "runtime": backend.runtime,
        "precision": precision,
        "artifact": path.name,
        "source": _source(model, model_dir),
        "style": model.spec.style,
        "layout": layout,
        "inputs": [{"name": n, "shape": shape, "dtype": "float32", "layout": layout, "range": INPUT_RANGE,
                    "color": "RGB"} if x.dim() == 4 else {"name": n, "shape": list(x.shape), "dtype": "float32"}
                   for n, x in zip(in_names, graph_inputs(model))],
        "outputs": [{"name": n, "dtype": "float32", "layout": layout,
                     "range": out_range}
                    for n in out_names],
        "versions": versions(backend.packages),
        "rewrites": rewrites,
    }


def verify(model: nn.Module, path: Path, backend: Backend, precision: str, size: tuple[int, int],
           manifest: dict) -> dict:
    """Parity on the artifact's runtime; where that cannot run here, the backend's structural check instead."""
    structure = backend.check_structure(path, manifest, precision) if backend.check_structure else None
    if not backend.can_run():
        return {"runtime": f"{backend.runtime} (structure only)", "predictions": backend.cannot_run_note,
                "structure": structure, "passed": None, "threshold_db": None}
    runner = backend.runner(path, None, manifest["layout"], manifest)  # the manifest is written after verification
    return parity(model, runner, precision, size)


def reuse_artifact(candidate: Path, model_dir: Path, out_dir: Path, size: tuple[int, int],
                   copied_from: str) -> tuple[Path, dict[str, Any]] | None:
    """Copy ``candidate`` (another stage's NCHW float export) into ``out_dir`` if it is exactly this export.

    Exactly: same file name (format, precision, layout), same source weights, same input shape, parity not
    failed. Saves building it twice (the quantize stage exports the same float model) and keeps the two
    byte-identical, so evaluation sees one variant at two paths. The manifest is written last.
    """
    if not candidate.exists() or manifest_problem(candidate):
        return None
    manifest = read_manifest(candidate)
    same = (manifest["source"].get("weights_sha256") == file_sha256(model_dir / WEIGHTS_FILE)
            and (manifest.get("inputs") or [{}])[0].get("shape") == [1, 3, *size]
            and manifest["parity"].get("passed") is not False)
    if not same:
        return None
    path = Path(out_dir) / candidate.name
    with atomic_output(path) as tmp:
        (shutil.copytree if candidate.is_dir() else shutil.copyfile)(candidate, tmp)
    manifest["copied_from"] = copied_from
    write_manifest(path, manifest)
    return path, manifest
