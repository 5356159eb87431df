"""The quantize stage: PTQ (static / dynamic / fp16 / weight-only) and QAT -> artifacts verified on their runtime.

1. export the float model (``exports.stage``; each runtime's rewrites),
2. calibrate on content images that never overlap the evaluation images (``compressor.quantize``),
3. for static int8, rescale the convs that feed instance norms to unit spread per channel
   (``compressor.quantize.equalize_norm_inputs``; the norm undoes it, the int8 scale fits every channel);
   for each int8 mode (static, QAT, dynamic), optionally rank layers by how much quantizing each one alone
   hurts (ONNX Runtime in that mode, judged on the settings' ``images``, the validation photos by default,
   against the reference: a run's teacher, else the fp32 model) and keep the worst in float until the int8
   model is within every budget given: ``grade`` (the perceptual judge, in the reference's own same-picture
   band and 2-px shift; ranks the layers), ``min_psnr_db`` (PSNR, worst photo), ``max_style_increase_pct``,
4. quantize with each runtime's own quantizer (its backend's ``quantize``), check
   parity (PSNR vs the fp32 PyTorch model on the held-out images) against the
   thresholds below, and write a manifest that says what runs in int8 and what
   stays float.

QAT (torch level, ``compressor.quantize.qat_finetune``) hands its learned float
weights to each runtime's static quantizer, which re-calibrates them.
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.config import QATConfig, QuantizeStage
from compressor.data import CalibrationSample, resolve_images, sample_content_paths
from compressor.fidelity import GRADES
from compressor.io import write_json
from compressor.models import get_family, load_model, save_model
from compressor.quantize import (
    QualityProbe,
    QuantizeError,
    calibration_samples,
    calibration_set,
    check_disjoint,
    equalize_norm_inputs,
    pt2e_ptq,
    qat_finetune,
    rgb_output_convs,
)
from exports.backends import QuantizeJob, backend_for_format
from exports.backends.onnxruntime import conv_layers, quantize_onnx
from exports.manifest import write_manifest
from exports.parity import parity
from exports.runtime import load_runner
from exports.stage import describe, export_artifact

log = logging.getLogger(__name__)

# Parity floor (PSNR dB vs the fp32 model, eval images): catches broken scales and ranges; fidelity is the judge's
# to grade (what int8 keeps per runtime: benchmarks/bench_quant.py, bench_tflite_int8.py).
QUANT_THRESHOLDS_DB: dict[str, float] = {
    "int8": 20.0,
    "int8-qat": 20.0,
    "int8-dynamic": 20.0,
    "int8-weight-only": 30.0,
    "fp16": 35.0,
}
PRECISION = {"static": "int8", "qat": "int8-qat", "dynamic": "int8-dynamic", "weight-only": "int8-weight-only",
             "fp16": "fp16"}


def _module_globs_to_nodes(layers: dict[str, str], globs: list[str]) -> list[str]:
    """Conv node names whose module name matches any glob (``res*.conv2*``, ``deconv3``)."""
    return [node for node, module in layers.items()
            if any(fnmatch.fnmatchcase(module, g) or fnmatch.fnmatchcase(module, g + ".*") for g in globs)]


def resolve_keep_float(globs: list[str], layers: dict[str, str]) -> list[str]:
    """The conv module names the keep-float globs name; a glob that names none is an error."""
    unknown = [g for g in globs if not _module_globs_to_nodes(layers, [g])]
    if unknown:
        raise QuantizeError(f"keep_float {unknown} match no conv layer; layers are {sorted(layers.values())}")
    return sorted({layers[n] for n in _module_globs_to_nodes(layers, globs)})


SENSITIVITY_ORDER = {  # most harmful first
    "perceptual": lambda r: (-r["perceptual_bands"], -r["style_bands"]),
    "psnr": lambda r: (r["psnr_db"], -r.get("style_increase_pct", 0.0)),
    "style": lambda r: (-r["style_increase_pct"], r["psnr_db"]),
}


def layer_sensitivity(float_onnx: Path, calibration: list[CalibrationSample], judge: QualityProbe,
                      method: str = "minmax",
                      work_dir: Path | None = None, by: str = "perceptual",
                      reduce_range: bool | None = None, mode: str = "static") -> list[dict[str, Any]]:
    """Quantize one conv at a time (ORT, static or dynamic int8) and measure the damage; most harmful first, ``by``
    the perceptual judge (farthest in bands), PSNR (lowest) or style loss (largest rise)."""
    results = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for node, module in conv_layers(float_onnx).items():
            path = Path(tmp) / "one.onnx"
            quantize_onnx(float_onnx, path, mode, calibration, method, only=[node], reduce_range=reduce_range)
            results.append({"layer": module, "node": node, **judge(load_runner(path))})
    return sorted(results, key=SENSITIVITY_ORDER[by])


def within_budget(quality: dict[str, Any], settings: QuantizeStage) -> bool:
    """Every budget the settings give holds: graded ``grade`` or better, PSNR vs fp32 at least ``min_psnr_db``,
    style rise at most ``max_style_increase_pct``."""
    return ((settings.grade is None or GRADES.index(quality["grade"]) <= GRADES.index(settings.grade))
            and (settings.min_psnr_db is None or quality["psnr_db"] >= settings.min_psnr_db)
            and (settings.max_style_increase_pct is None
                 or quality["style_increase_pct"] <= settings.max_style_increase_pct))


BUDGET_COLUMNS = ("grade", "perceptual_bands", "style_bands", "vector_bands", "psnr_db")  # what a warning quotes


def _short(value: float | str) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _mixed_precision(settings: QuantizeStage, keep_float: list[str], float_onnx: Path,
                     calibration: list[CalibrationSample], judge: QualityProbe, work_dir: Path,
                     mode: str) -> tuple[list[str], dict]:
    """Greedy: from the ``keep_float`` globs, add the most sensitive layer to the float set until the int8 model
    (ORT, ``mode``: static or dynamic) fits the budget(s). A budget the float model itself misses (its distance
    from a teacher, or a PSNR above its own export's) is said at once, and no conv is kept float for it."""
    layers = conv_layers(float_onnx)
    by = "perceptual" if settings.grade else "psnr" if settings.min_psnr_db is not None else "style"
    budget = {"budget_grade": settings.grade, "budget_min_psnr_db": settings.min_psnr_db,
              "budget_style_increase_pct": settings.max_style_increase_pct, "ranked_by": by, "ranked_as": mode}
    float_quality = judge(load_runner(float_onnx))
    if not within_budget(float_quality, settings):
        log.warning("mixed precision (%s int8): the float model itself misses the budget (%s), so no float set "
                    "can meet it and none is searched for: train it on, relax the budget, or judge on photos like "
                    "those it will paint (quantize.images)", mode,
                    ", ".join(f"{k} {_short(float_quality[k])}" for k in BUDGET_COLUMNS if k in float_quality))
        return resolve_keep_float(keep_float, layers), {**budget, "met": False, "float_model": float_quality,
                                                         "ranking": [], "trail": []}
    ranking = layer_sensitivity(float_onnx, calibration, judge, settings.calibration_method, work_dir, by=by,
                                reduce_range=settings.onnx_reduce_range, mode=mode)
    keep = resolve_keep_float(keep_float, layers)
    trail = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for candidate in [None] + [r["layer"] for r in ranking]:
            if candidate is not None:
                if candidate in keep:
                    continue
                keep.append(candidate)
            path = Path(tmp) / "mixed.onnx"
            nodes = _module_globs_to_nodes(layers, keep)
            quantize_onnx(float_onnx, path, mode, calibration, settings.calibration_method, keep_float=nodes,
                          reduce_range=settings.onnx_reduce_range)
            quality = judge(load_runner(path))
            trail.append({"keep_float": list(keep), **quality})
            if within_budget(quality, settings):
                break
    met = within_budget(trail[-1], settings)
    if not met:  # static: what stays int8 beside the convs (activations, adds, padding, graph I/O) costs the budget
        log.warning("mixed precision (%s int8): the budget is not met even with every conv float (%s); the error is "
                    "in what stays int8 beside them (their activations, adds, padding): use a dynamic mode or relax "
                    "it", mode, ", ".join(f"{k} {_short(trail[-1][k])}" for k in BUDGET_COLUMNS if k in trail[-1]))
    return keep, {**budget, "met": met, "float_model": float_quality, "ranking": ranking, "trail": trail}


def _job(reference: nn.Module, source_dir: Path, fmt: str, mode: str, keep_float: list[str], out_dir: Path,
         float_dir: Path, settings: QuantizeStage, calibration: list[CalibrationSample], judge: QualityProbe | None,
         extra: dict[str, Any], exported: dict[tuple, tuple[Path, dict[str, Any]]]) -> QuantizeJob:
    """The callbacks a backend's ``quantize`` uses for one mode: export the float model (into ``float_dir``), write
    a verified manifest."""
    size = (settings.size, settings.size)
    backend = backend_for_format(fmt)

    def export_float(fmt: str, precision: str | None = None) -> tuple[Path, dict[str, Any]]:
        key = (source_dir, fmt, precision)  # several modes of one runtime quantize the same float artifact
        if key not in exported:
            exported[key] = export_artifact(source_dir, fmt, float_dir, precision=precision, size=size)
        return exported[key]

    def write(path: Path, precision: str, info: dict, runner=None, verdict: dict | None = None) -> dict:
        """Manifest (the exporter's fields + quantization details + parity verdict), written beside the artifact.

        Parity is measured against ``reference``, the fp32 model before quantization (before QAT too).
        """
        manifest = describe(load_model(source_dir), source_dir, backend, precision, path, size, "nchw", False,
                            info.pop("rewrites", []))
        manifest["quantization"] = info
        manifest["parity"] = verdict or parity(reference, runner, precision, size,
                                               threshold_db=QUANT_THRESHOLDS_DB[precision])
        write_manifest(path, manifest)
        return manifest

    return QuantizeJob(reference=reference, out_dir=out_dir, settings=settings, calibration=calibration, judge=judge,
                       extra={**extra, "mode": mode}, export_float=export_float, write=write,
                       keep_float=lambda layers: resolve_keep_float(keep_float, layers),
                       precision=PRECISION[mode], mode="static" if mode == "qat" else mode)


def check_runtimes(settings: QuantizeStage) -> None:
    """Every runtime makes at least one of the modes asked for, and a budget has a runtime that keeps convs float:
    said before any calibration, QAT or search."""
    for fmt in settings.runtimes:
        backend = backend_for_format(fmt)
        if not any(mode in backend.quantize_modes for mode in settings.modes):
            made = ", ".join(backend.quantize_modes)
            raise QuantizeError(f"quantize.modes: {backend.runtime} quantizes with {made}, got "
                                f"{', '.join(settings.modes)} (add one of them)")
    if settings.has_budget and settings.runtimes == ["coreml"]:
        raise QuantizeError("quantize.grade / min_psnr_db / max_style_increase_pct keep convs float on ONNX Runtime "
                            "and LiteRT; Core ML compresses every conv's weights (add runtime onnx or tflite, or drop "
                            "the budget)")


def check_settings(settings: QuantizeStage) -> None:
    """What ``quantize`` can refuse from its settings alone (runtimes, calibration and judging photos), so that a caller
    replacing an earlier output checks first."""
    check_runtimes(settings)
    check_disjoint(resolve_images(settings.calibration, "train"), sample_content_paths("eval"))
    check_disjoint(resolve_images(settings.images, "val"), sample_content_paths("eval"), "quality")


def quantize(
    model_dir: str | Path,
    out_dir: str | Path,
    settings: QuantizeStage,
    vgg: nn.Module | None = None,
    grams: dict[str, torch.Tensor] | None = None,
    resume: bool = False,
    progress: bool = True,
    teacher: nn.Module | None = None,
) -> list[dict]:
    """Quantize the float model in ``model_dir`` for every runtime in ``settings``; returns the manifests.

    ``vgg`` (the reference loss network) and the style's ``grams`` add style / content-loss columns; QAT and a
    style-loss budget need them, plain PTQ does not. Budgets grade the int8 model against ``teacher``'s pictures
    where one is given (a run's: the picture its report grades against), else against the float model's.

    Parity failures are recorded in the manifests (``parity.passed``) and logged, not raised, so one
    weak variant does not hide the others; check the returned verdicts.
    """
    check_settings(settings)
    if vgg is None and ("qat" in settings.modes or settings.max_style_increase_pct is not None):
        raise QuantizeError("mode qat and max_style_increase_pct need the reference loss network (VGG19)")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_model(model_dir)
    calibration, calib_paths = calibration_set(settings.calibration, settings.size)
    calibration = calibration_samples(model, calibration)
    photos = resolve_images(settings.images, "val")  # held apart from the held-out photos: check_settings
    extra: dict[str, Any] = {
        "calibration_method": settings.calibration_method,
        "calibration_images": [str(p) for p in calib_paths], "quality_images": [str(p) for p in photos],
        "loss_network": vgg.weights_source if vgg is not None else None,
    }
    family = get_family(model)
    if len(family.io_names(model)[0]) != 1 and family.n_styles(model) == 1:
        raise QuantizeError(f"{model_dir}: quantizing {type(model).__name__} (a style image or vector input) is not "
                            "supported; quantize a one-input model or one with style weights in (multi-style)")
    # Quality needs an image-to-image model; a loss network gets parity on its taps only.
    judge = QualityProbe(model, vgg, grams, settings.size, photos) if family.role == "style_transformer" else None
    budget = settings.has_budget
    if judge is None and (budget or "qat" in settings.modes):
        raise QuantizeError("grade, min_psnr_db, max_style_increase_pct and mode qat need an image-to-image model "
                            "(a style transformer)")
    budget_judge = judge
    if budget and teacher is not None:
        wanted, given = get_family(teacher).io_names(teacher)[0], family.io_names(model)[0]
        if wanted != given:
            raise QuantizeError(f"{model_dir}: a budget against the teacher needs the teacher's inputs "
                                f"({', '.join(wanted)}), the model takes {', '.join(given)}")
        budget_judge = QualityProbe(teacher, vgg, grams, settings.size, photos)
    rgb = rgb_output_convs(model)
    unused = sorted(set(settings.keep_float) - set(settings.modes)) if isinstance(settings.keep_float, dict) else []
    if unused:
        log.warning("quantize.keep_float names %s, which quantize.modes (%s) does not make; its list is unused",
                    ", ".join(unused), ", ".join(settings.modes))
    sources = {mode: model_dir for mode in settings.modes}
    if "qat" in settings.modes:
        config = settings.qat or QATConfig()
        _, int8_reference = qat_finetune(model, vgg, config, out_dir / "qat", settings.calibration, resume, progress)
        extra["qat"] = {"steps": config.steps, "pt2e_qat_int8_quality": judge(int8_reference),
                        "pt2e_ptq_int8_quality": judge(pt2e_ptq(model, calibration)),
                        "carried_into_runtimes_as": "QAT-trained float weights, re-calibrated by each runtime's "
                        "static quantizer (PT2E QAT graphs do not export as quantized ONNX/TFLite)"}
        sources["qat"] = out_dir / "qat"
    calibrated = [mode for mode in settings.modes if mode in ("static", "qat")]  # int8 activations, fixed ranges
    extras = {mode: dict(extra) for mode in settings.modes}
    for mode in calibrated if settings.equalize_norm_inputs else []:
        equalized, convs = equalize_norm_inputs(load_model(sources[mode]), calibration)
        if convs:
            extras[mode]["equalized_norm_inputs"] = convs
            sources[mode] = save_model(equalized, out_dir / f"equalized-{mode}", meta={
                "equalized_from": str(sources[mode]), "equalized_norm_inputs": convs})
    keeps = {mode: sorted(set(settings.keep_float_for(mode)) | set(rgb)) for mode in settings.modes}
    for mode in [m for m in settings.modes if m in ("static", "qat", "dynamic")] if budget else []:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".sensitivity-") as work:  # not an artifact
            float_path, _ = export_artifact(sources[mode], "onnx", Path(work), size=(settings.size,) * 2)
            keeps[mode], mixed = _mixed_precision(settings, keeps[mode], float_path, calibration, budget_judge,
                                                  Path(work), "dynamic" if mode == "dynamic" else "static")
        against = "teacher" if teacher is not None else "float model"
        extras[mode]["mixed_precision"] = {**mixed, "judged_against": against}
    manifests, exported = [], {}
    for fmt in settings.runtimes:
        backend = backend_for_format(fmt)
        modes = [mode for mode in settings.modes if mode in backend.quantize_modes]
        for mode in modes[:1] if backend.mode_independent else modes:
            # Weight compression (mode_independent) takes the weights as they are, not an equalized copy.
            source, info = (model_dir, dict(extra)) if backend.mode_independent else (sources[mode], extras[mode])
            # The float artifact each int8 one was made from; a derived source (equalized, QAT) gets its own folder.
            float_dir = out_dir / fmt / ("float" if source == model_dir else f"float-{source.name}")
            job = _job(model, source, fmt, mode, keeps[mode], out_dir / fmt, float_dir, settings, calibration,
                       judge, info, exported)
            manifests += backend.quantize(job)
    for m in manifests:
        p = m["parity"]
        if p.get("passed") is False:
            log.warning("%s: parity FAILED, PSNR %.1f dB < %.1f dB", m["artifact"], p["psnr_db"], p["threshold_db"])
    write_json(out_dir / "summary.json", _summary(manifests))
    return manifests


def _summary(manifests: list[dict]) -> list[dict]:
    return [{"format": m["format"], "precision": m["precision"], "artifact": m["artifact"],
             "psnr_db": m["parity"].get("psnr_db"), "passed": m["parity"].get("passed"),
             "quality": m["quantization"].get("quality"), "keep_float": m["quantization"].get("keep_float")}
            for m in manifests]
