"""Evaluate variants against the teacher: quality, cost, latency, memory -> one report dict.

The first variant is the reference (the teacher). Quality is always judged by
the uncompressed reference VGG19 passed in, never by a compressed network.
A variant that fails (e.g. an artifact whose runtime is missing) gets an
``error`` and the rest of the report is still written.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from compressor.config import EvaluateStage
from compressor.data import load_image, save_image
from compressor.images import center_square, resize
from compressor.losses import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, style_grams
from compressor.models import create_model, get_family
from evaluation import lossnet
from evaluation.latency import machine_info, measure_latency
from evaluation.memory import peak_rss
from evaluation.metrics import degradation_pct, fidelity, layer_widths, params_and_macs, perceptual_losses
from evaluation.variants import Variant, size_on_disk

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


def square_image(path: Path, size: int) -> torch.Tensor:
    """Centre square crop resized to ``size``: every runtime, fixed-shape artifacts included, sees the same input."""
    return center_square(load_image(path).unsqueeze(0), size)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def artifact_size(variant: Variant) -> int | None:
    """The fixed input side an artifact was exported with (its manifest's input shape); None if dynamic."""
    shape = ((variant.manifest.get("inputs") or [{}])[0]).get("shape") or []
    if len(shape) != 4:
        return None
    side = shape[2] if variant.manifest.get("layout", "nchw") == "nchw" else shape[1]
    return side if isinstance(side, int) else None


def evaluate(
    variants: list[Variant],
    vgg: torch.nn.Module,
    style_image: torch.Tensor,
    image_paths: list[Path],
    settings: EvaluateStage,
    work_dir: Path,
    style_path: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every variant; ``variants[0]`` is the teacher every degradation and PSNR refers to."""
    torch.set_num_threads(settings.threads)
    images = [square_image(p, settings.size) for p in image_paths]
    grams = style_grams(vgg, style_image)
    rows = [_describe(v, settings, style_image) for v in variants]
    outputs = _quality(variants, rows, images, image_paths, vgg, grams, style_image, settings, work_dir, progress)
    _latency(variants, rows, style_image, settings, progress)
    if settings.memory:
        _memory(variants, rows, settings, style_path, progress)
    _lossnet(variants, rows, vgg)
    mark_pareto(rows)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "loss_network": {
            "weights": vgg.weights_source,
            "style_layers": DEFAULT_STYLE_LAYERS,
            "content_layers": DEFAULT_CONTENT_LAYERS,
        },
        "reference": variants[0].name,
        "style": str(style_path) if style_path else None,
        "eval_images": [str(p) for p in image_paths],
        "settings": settings.model_dump(mode="json"),
        "machine": machine_info(),
        "variants": rows,
        "exports": [_export_entry(v) for v in variants if v.is_artifact],
        "images": {"work_dir": str(work_dir), "grid": outputs},
    }


def _describe(variant: Variant, settings: EvaluateStage, style: torch.Tensor) -> dict[str, Any]:
    """Name, kind and cost columns of one variant (params/MACs from the torch model or the artifact's source)."""
    row: dict[str, Any] = {
        "name": variant.name,
        "kind": "artifact" if variant.is_artifact else "torch",
        "family": variant.family,
        "path": str(variant.path),
        "runtime": variant.runtime,
        "params": None,
        "macs": None,
        "size_bytes": size_on_disk(variant.path),
        "widths": None,
        "quality": {},
        "latency_ms": {},
        "latency_sweep": [],
        "memory": None,
        "pareto": False,
        "errors": [],
    }
    model = variant.model
    source_spec = (variant.manifest.get("source") or {}).get("spec")
    if model is None and source_spec:
        model = create_model(source_spec)  # architecture only: params and MACs need no weights
    if model is not None:
        x = torch.rand(1, 3, settings.size, settings.size)
        example = get_family(model).inputs(x, style)
        row["params"], row["macs"] = params_and_macs(model, example)
        row["macs_at_size"] = settings.size
        row["widths"] = layer_widths(model.current_spec())
    return row


def _quality(variants, rows, images, image_paths, vgg, grams, style, settings, work_dir, progress) -> list[dict]:
    """Stylise every eval image with every variant; losses, fidelity to the teacher; images saved for the grid."""
    per_variant: list[list[torch.Tensor] | None] = []
    total = len(variants) * len(images)
    bar = tqdm(total=total, desc="quality", disable=not progress, leave=False)
    for variant, row in zip(variants, rows):
        outs = None
        if variant.role == "loss_network":
            row["quality"]["note"] = "loss-network variant: judged by rank correlation of losses"
        elif not variant.measurable:
            row["quality"]["note"] = variant.not_measurable_note
        else:
            try:
                run = variant.runner(style, settings.threads)
                with torch.no_grad():
                    outs = [run(_fit(variant, img)).float() for img in images]
                outs = [resize(o.clamp(0, 1), img.shape[-2:]) for o, img in zip(outs, images)]
            except Exception as exc:  # one broken artifact must not hide the others
                row["errors"].append(f"inference: {type(exc).__name__}: {exc}")
                outs = None
        per_variant.append(outs)
        bar.update(len(images))
    bar.close()

    teacher = per_variant[0]
    ref_losses = _mean_losses(vgg, teacher, images, grams) if teacher else None
    for outs, row in zip(per_variant, rows):
        if outs is None:
            continue
        losses = _mean_losses(vgg, outs, images, grams)
        q = row["quality"]
        q.update(losses)
        if ref_losses:
            q["style_degradation_pct"] = degradation_pct(losses["style_loss"], ref_losses["style_loss"])
            q["content_degradation_pct"] = degradation_pct(losses["content_loss"], ref_losses["content_loss"])
            q["degradation_pct"] = (q["style_degradation_pct"] + q["content_degradation_pct"]) / 2
            fid = [fidelity(o, t) for o, t in zip(outs, teacher)]
            psnrs = [f["psnr_vs_teacher"] for f in fid]
            q["psnr_vs_teacher"] = None if None in psnrs else sum(psnrs) / len(psnrs)
            q["ssim_vs_teacher"] = sum(f["ssim_vs_teacher"] for f in fid) / len(fid)

    grid = []
    for i, (path, img) in enumerate(zip(image_paths, images)):
        entry = {"content": str(save_image(img, work_dir / "images" / "content" / f"{i}_{path.stem}.png")), "outputs": {}}
        for variant, outs in zip(variants, per_variant):
            if outs is not None:
                out_path = work_dir / "images" / slug(variant.name) / f"{i}_{path.stem}.png"
                entry["outputs"][variant.name] = str(save_image(outs[i], out_path))
        grid.append(entry)
    return grid


def _fit(variant: Variant, img: torch.Tensor) -> torch.Tensor:
    """Resize to a fixed-shape artifact's input size when it differs from the evaluation size."""
    size = artifact_size(variant)
    if size and img.shape[-1] != size:
        return resize(img, (size, size))
    return img


def _mean_losses(vgg, outputs, images, grams) -> dict[str, float]:
    losses = [perceptual_losses(vgg, o, c, grams) for o, c in zip(outputs, images)]
    return {k: sum(d[k] for d in losses) / len(losses) for k in ("style_loss", "content_loss")}


def _latency(variants, rows, style, settings: EvaluateStage, progress: bool) -> None:
    """Round-robin timing of all runnable variants at each latency size; the first size fills ``latency_ms``."""
    for size in settings.latency_sizes:
        x = torch.rand(1, 3, size, size)
        st = resize(style, (size, size))
        calls = {}
        for i, (variant, row) in enumerate(zip(variants, rows)):
            if not variant.measurable:
                row["latency_ms"][variant.runtime] = {"p50": None, "p90": None, "note": variant.not_measurable_note}
                continue
            fixed = artifact_size(variant)
            if fixed and fixed != size:
                continue
            try:
                run = variant.runner(st, settings.threads)
                with torch.no_grad():
                    run(x)
            except Exception as exc:
                row["errors"].append(f"latency at {size}px: {type(exc).__name__}: {exc}")
                continue
            calls[i] = (lambda run=run: _no_grad(run, x))
        stats = measure_latency(calls, runs=settings.latency_runs, warmup=settings.warmup, progress=progress)
        for i, stat in stats.items():
            variant, row = variants[i], rows[i]
            entry = stat | {"size": size, "threads": settings.threads}
            row["latency_sweep"].append(entry | {"runtime": variant.runtime})
            row["latency_ms"].setdefault(variant.runtime, entry)


def _no_grad(run, x):
    with torch.no_grad():
        return run(x)


def _memory(variants, rows, settings: EvaluateStage, style_path: Path | None, progress: bool) -> None:
    size = settings.latency_sizes[0]
    for variant, row in tqdm(list(zip(variants, rows)), desc="memory", disable=not progress, leave=False):
        if not variant.measurable:
            continue
        try:
            row["memory"] = peak_rss(variant.path, size, settings.threads, style_path) | {"size": size}
        except Exception as exc:
            row["errors"].append(f"memory: {type(exc).__name__}: {exc}")


def _lossnet(variants, rows, vgg) -> None:
    """Loss-network variants: Spearman rank correlation of their losses vs the reference VGG19's."""
    targets = [(v, r) for v, r in zip(variants, rows) if v.role == "loss_network" and v.model is not None]
    for variant, row in targets:
        try:
            row["quality"]["spearman"] = lossnet.loss_rank_correlation(variant.model, vgg)
        except Exception as exc:
            row["errors"].append(f"lossnet: {type(exc).__name__}: {exc}")


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """Star rows no other row beats on both latency (own runtime, p50) and mean degradation."""
    points = {}
    for i, row in enumerate(rows):
        lat = row["latency_ms"].get(row["runtime"], {}).get("p50")
        deg = row["quality"].get("degradation_pct")
        if lat is not None and deg is not None:
            points[i] = (lat, deg)
    for i, (lat, deg) in points.items():
        dominated = any(
            ol <= lat and od <= deg and (ol < lat or od < deg) for j, (ol, od) in points.items() if j != i
        )
        rows[i]["pareto"] = not dominated


def _export_entry(variant: Variant) -> dict[str, Any]:
    m = variant.manifest
    parity = m.get("parity") or {}
    return {
        "name": variant.name,
        "format": m.get("format", variant.path.suffix.lstrip(".")),
        "precision": m.get("precision"),
        "path": str(variant.path),
        "manifest": str(variant.manifest_path) if variant.manifest_path else None,
        "size_bytes": size_on_disk(variant.path),
        "parity": {
            "runtime": parity.get("runtime"),
            "psnr_db": parity.get("psnr_db"),
            "passed": parity.get("passed"),
        },
    }
