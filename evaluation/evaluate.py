"""Evaluate variants against the teacher: fidelity, quality, cost, latency, memory -> one report dict.

The first variant is the reference (the teacher). Fidelity is how closely a
variant reproduces the teacher's picture on the held-out photos, by the
perceptual judge (``compressor.fidelity``) in units of the teacher's own
same-picture variation; it alone ranks variants (Pareto frontier, verdict),
because a student that merely draws a *different* picture can score a lower
style/content loss without being any closer to the teacher. PSNR / SSIM are
columns; the losses, judged by the uncompressed reference VGG19, signed deltas.

A variant is one model on one runtime, identified by its content hash: two
paths holding the same bytes are evaluated once and listed together. Paths in
the report are relative to the run folder. A variant that fails (e.g. an
artifact whose runtime is missing) gets an ``error`` and the rest is still written.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from compressor.config import EvaluateStage
from compressor.data import load_image, save_image
from compressor.errors import UserError
from compressor.fidelity import (
    GRADES,
    calibrate,
    degenerate,
    distances,
    grade,
    in_bands,
    judge_info,
    judgement,
    worst_grade,
)
from compressor.images import center_square, resize
from compressor.io import file_sha256
from compressor.judge import embed
from compressor.losses import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, style_grams
from compressor.models import create_model, get_family
from compressor.models.checkpoint import WEIGHTS_FILE
from evaluation import lossnet
from evaluation.latency import machine_info, measure_latency
from evaluation.memory import peak_rss
from evaluation.metrics import degradation_pct, fidelity, layer_widths, params_and_macs, perceptual_losses
from evaluation.report import perceptual_bands
from evaluation.variants import Variant, content_hash, peer_variant, size_on_disk, web_twins

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3
DIFF_GAIN = 8  # difference images show |variant - teacher| x this
FRONTIER_MEASURE = "perceptual_bands"


def display_path(path: str | Path, root: Path | None) -> str:
    """``path`` relative to the run folder when inside it, else to the working directory, else package-relative."""
    resolved = Path(path).resolve()
    for base in (root, Path.cwd()):
        if base is not None and resolved.is_relative_to(Path(base).resolve()):
            return resolved.relative_to(Path(base).resolve()).as_posix()
    parts = resolved.parts
    if "site-packages" in parts:  # bundled data (scikit-image's photos, styleslim's styles)
        return Path(*parts[parts.index("site-packages") + 1:]).as_posix()
    return Path(path).as_posix()


def dedupe(variants: list[Variant], root: Path | None) -> tuple[list[Variant], dict[int, dict[str, Any]]]:
    """One variant per (runtime, content hash, a peer's inputs), first found kept; returns them and, per kept index,
    hash + paths."""
    kept: list[Variant] = []
    info: dict[int, dict[str, Any]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for variant in variants:
        digest = content_hash(variant.path)
        key = (variant.runtime, digest, repr((variant.peer_inputs, variant.peer_style_input)))
        if key in seen:
            info[seen[key]]["paths"].append(display_path(variant.path, root))
            continue
        seen[key] = len(kept)
        info[len(kept)] = {"sha256": digest, "paths": [display_path(variant.path, root)]}
        kept.append(variant)
    return kept, info


def square_image(path: Path, size: int) -> torch.Tensor:
    """Centre square crop resized to ``size``: every runtime, fixed-shape artifacts included, sees the same input."""
    return center_square(load_image(path).unsqueeze(0), size)


def slug(name: str) -> str:
    """A folder name for a variant; dots go too, so no folder looks like a model file (``model-fp32_onnx``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


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
    root: Path | None = None,
) -> dict[str, Any]:
    """Measure every distinct variant; ``variants[0]`` is the teacher every fidelity and delta refers to.

    ``root`` is the folder the report is written to; paths are stored relative to it. Torch runs on
    ``settings.threads`` meanwhile, and on the caller's thread count again afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _evaluate(variants, vgg, style_image, image_paths, settings, work_dir, style_path, progress, root)
    finally:
        torch.set_num_threads(threads)


def _evaluate(variants, vgg, style_image, image_paths, settings, work_dir, style_path, progress, root
              ) -> dict[str, Any]:
    variants = web_twins(variants, settings.web) + [peer_variant(p) for p in settings.peers]
    variants, identity = dedupe(variants, root)
    images = [square_image(p, settings.size) for p in image_paths]
    reference = _style_reference(variants[0], settings.style_reference)
    grams = style_grams(vgg, style_image) if reference == "image" else None
    judged = _judged_styles(variants[0], settings.styles, style_image)
    for peer in (v for v in variants if v.peer_style_input):
        peer.check_peer_runs(judged[0][1])  # it takes this teacher's style mixes
    rows = [_describe(v, settings, judged[0][1], root) | identity[i] for i, v in enumerate(variants)]
    _mark_teacher_twins(variants, rows)
    outputs, judge = _quality(variants, rows, images, image_paths, vgg, grams, judged, settings, work_dir, root,
                              progress)
    _latency(variants, rows, judged[0][1], settings, progress)
    if settings.memory:
        _memory(variants, rows, settings, style_path, progress)
    _lossnet(variants, rows, vgg)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "loss_network": {
            "weights": vgg.weights_source,
            "style_layers": DEFAULT_STYLE_LAYERS,
            "content_layers": DEFAULT_CONTENT_LAYERS,
        },
        "reference": variants[0].name,
        "style": display_path(style_path, root) if style_path and reference == "image" else None,
        "style_reference": reference,
        "eval_images": [display_path(p, root) for p in image_paths],
        "settings": settings.model_dump(mode="json"),
        "machine": machine_info(),
        "judge": judge,
        "ranking": rank(rows, settings.grade, settings.min_psnr_db),
        "variants": rows,
        "exports": [_export_entry(v, root) for v in variants if v.is_artifact and v.runtime == v.own_runtime],
        "images": {"work_dir": display_path(work_dir, root), "diff_gain": DIFF_GAIN, "grid": outputs},
    }


def _describe(variant: Variant, settings: EvaluateStage, style: torch.Tensor, root: Path | None) -> dict[str, Any]:
    """Name, kind and cost columns of one variant (params/MACs from the torch model or the artifact's source)."""
    row: dict[str, Any] = {
        "name": variant.name,
        "kind": "peer" if variant.is_peer else "artifact" if variant.is_artifact else "torch",
        "family": variant.family,
        "path": display_path(variant.path, root),
        "runtime": variant.runtime,
        "precision": variant.manifest.get("precision") if variant.is_artifact else "fp32",
        "params": None,
        "macs": None,
        "size_bytes": size_on_disk(variant.path),
        "widths": None,
        "quality": {},
        "latency_ms": {},
        "latency_sweep": [],
        "memory": None,
        "pareto": False,
        "verdict": False,
        "errors": [],
    }
    if not variant.measurable:
        row["structure"] = _structure(variant)
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


def _mark_teacher_twins(variants: list[Variant], rows: list[dict[str, Any]]) -> None:
    """Flag the teacher and its own exports (an artifact built from the teacher's weights): the baseline each
    runtime's speed-up is measured against, so pruning's gain is not mixed up with the runtime's."""
    weights = Path(variants[0].path) / WEIGHTS_FILE
    digest = file_sha256(weights) if weights.is_file() else None
    for i, (variant, row) in enumerate(zip(variants, rows)):
        source = (variant.manifest.get("source") or {}).get("weights_sha256")
        row["teacher_weights"] = i == 0 or (digest is not None and source == digest and not variant.is_peer)


def _structure(variant: Variant) -> dict[str, Any] | None:
    """What this machine verified of an artifact it cannot run (Core ML on Linux): I/O, op types, weight dtypes."""
    parity = variant.manifest.get("parity") or {}
    structure = parity.get("structure")
    if not structure:
        return None
    return {"verified": True, "inputs": structure.get("inputs", []), "outputs": structure.get("outputs", []),
            "op_count": len(structure.get("op_types", [])), "weight_dtypes": structure.get("weight_dtypes", []),
            "compressed_weights": structure.get("compressed_weights", {}),
            "predictions": parity.get("predictions") or variant.not_measurable_note}


def _quality(variants, rows, images, image_paths, vgg, grams, judged, settings, work_dir, root, progress
             ) -> tuple[list[dict], dict[str, Any]]:
    """Stylise every eval image in every judged style with every variant; fidelity to the teacher (the judge,
    PSNR/SSIM), losses; images saved for the grid (the first style's). Returns the grid and the judge section."""
    items = [(path, label) for label, _ in judged for path in image_paths]  # style-major: the first style first
    per_variant: list[list[torch.Tensor] | None] = []
    bar = tqdm(total=len(variants) * len(items), desc="quality", disable=not progress, leave=False)
    for variant, row in zip(variants, rows):
        outs = None
        if variant.role == "loss_network":
            row["quality"]["note"] = "loss-network variant: judged by rank correlation of losses"
        elif not variant.measurable:
            row["quality"]["note"] = variant.not_measurable_note
        else:
            try:
                outs = []
                for _, style_input in judged:  # a single-style variant ignores the style it is asked for
                    run = variant.runner(style_input, settings.threads)
                    outs += [_stylize(variant, run, img) for img in images]
                    if getattr(run, "runner", None) is not None and run.runner.info:
                        row["runtime_info"] = run.runner.info
            except Exception as exc:  # one broken artifact must not hide the others
                row["errors"].append(f"inference: {type(exc).__name__}: {exc}")
                outs = None
        per_variant.append(outs)
        bar.update(len(items))
    bar.close()

    teacher = per_variant[0]
    contents = images * len(judged)
    if grams is not None:
        item_grams = [grams] * len(contents)
    else:  # the teacher's own picture of each photo is the style every variant should keep
        with torch.no_grad():
            item_grams = [style_grams(vgg, out) for out in teacher] if teacher else None
    ref_losses = _mean_losses(vgg, teacher, contents, item_grams) if teacher else None
    style_scale = None  # against the style image: in % of the teacher's own style loss
    if ref_losses and grams is None:  # against the teacher's picture its loss is 0: in % of that picture's Grams
        style_scale = sum(sum(w * float((g[k] ** 2).mean()) for k, w in DEFAULT_STYLE_LAYERS.items())
                          for g in item_grams) / len(item_grams)
    for outs, row in zip(per_variant, rows):
        if outs is None or item_grams is None:
            continue
        losses = _mean_losses(vgg, outs, contents, item_grams)
        q = row["quality"]
        q.update(losses)
        if ref_losses:
            q.update(_fidelity(outs, teacher, items))
            q["style_degradation_pct"] = degradation_pct(losses["style_loss"], ref_losses["style_loss"], style_scale)
            q["content_degradation_pct"] = degradation_pct(losses["content_loss"], ref_losses["content_loss"])
            q["degradation_pct"] = (q["style_degradation_pct"] + q["content_degradation_pct"]) / 2
    judge = _judge(variants, rows, per_variant, images, [p.name for p in image_paths], judged, settings.threads,
                   progress)

    grid = []
    for i, (path, img) in enumerate(zip(image_paths, images)):
        content = save_image(img, work_dir / "images" / "content" / f"{i}_{path.stem}.png")
        entry = {"image": path.name, "content": display_path(content, root), "outputs": {}, "diffs": {}}
        for variant, outs in zip(variants, per_variant):
            if outs is None:
                continue
            folder = work_dir / "images" / slug(variant.name)
            entry["outputs"][variant.name] = display_path(save_image(outs[i], folder / f"{i}_{path.stem}.png"), root)
            if teacher is not None and variant is not variants[0]:
                diff = ((outs[i] - teacher[i]).abs() * DIFF_GAIN).clamp(0, 1)
                entry["diffs"][variant.name] = display_path(
                    save_image(diff, folder / f"{i}_{path.stem}.diff.png"), root)
        grid.append(entry)
    return grid, judge


def _stylize(variant: Variant, run, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return resize(run(_fit(variant, image)).float().clamp(0, 1), image.shape[-2:])


def _judge(variants, rows, per_variant, images, image_names, judged, threads: int, progress: bool) -> dict[str, Any]:
    """The judge's distances of every variant from the teacher, calibrated per style on the teacher's own
    variation (band, 2-px shift); ``quality.judge`` per variant (and per style / per image, in the style's bands),
    the report section."""
    info = judge_info() | {"calibration": [], "teacher_warning": None}
    teacher = per_variant[0]
    if teacher is None:
        return info
    info["teacher_warning"] = degenerate(teacher)
    n = len(images)
    refs = [embed(o) for o in teacher]
    for s, (label, style_input) in enumerate(judged):
        run = variants[0].runner(style_input, threads)
        cal = calibrate(lambda x, run=run: _stylize(variants[0], run, x), images, teacher[s * n:(s + 1) * n],
                        refs[s * n:(s + 1) * n])
        for photo, entry in zip(image_names, cal["per_photo"]):
            entry |= {"image": photo, "shift_bands": in_bands(entry["shift"], cal)}
        info["calibration"].append({"style": label} | cal)
    bar = tqdm(total=sum(o is not None for o in per_variant), desc="judge", disable=not progress, leave=False)
    for outs, row in zip(per_variant, rows):
        if outs is None:
            continue
        embedded = refs if outs is teacher else [embed(o) for o in outs]  # the teacher's own row: embedded once
        per_item = [distances(e, r) for e, r in zip(embedded, refs)]
        q = row["quality"]
        for i, (entry, raw) in enumerate(zip(q.get("per_image", []), per_item)):  # style-major, as judged
            cal = info["calibration"][i // n]
            own = cal["per_photo"][i % n]  # this photo's own band and shift: its yardstick differs widely by photo
            entry["judge"] = raw | {f"{d}_bands": v for d, v in in_bands(raw, cal).items()} | {
                "grade": grade(in_bands(raw, own), own)}
        per_style = []
        for s, cal in enumerate(info["calibration"]):
            per_style.append(judgement(per_item[s * n:(s + 1) * n], cal))
        if "per_style" in q:
            for entry, judged_style in zip(q["per_style"], per_style):
                entry["judge"] = judged_style
        q["judge"] = {k: sum(p[k] for p in per_style) / len(per_style)
                      for k in ("perceptual", "style", "vector", "perceptual_bands", "style_bands", "vector_bands")}
        q["judge"]["grade"] = worst_grade([p["grade"] for p in per_style])
        bar.update(1)
    bar.close()
    return info


def _judged_styles(teacher: Variant, styles: list[str], style_image: torch.Tensor
                   ) -> list[tuple[str | None, torch.Tensor]]:
    """(label, style input) for each style every variant is judged on: the style image alone, a multi-style
    teacher's style 0, or ``styles`` of a multi-style teacher (a style one variant cannot do is still asked of it,
    and its fidelity shows that)."""
    family = get_family(teacher.family) if teacher.family else None
    multi = teacher.model is not None and family is not None and family.n_styles(teacher.model) > 1
    if not styles:
        return [(None, family.style_mix(teacher.model, "0") if multi else style_image)]
    if not multi:
        raise UserError("`styles`", f"the teacher {teacher.name} holds one style",
                        "judge several styles against a multi-style model folder, or leave styles empty")
    try:
        return [(spec, family.style_mix(teacher.model, spec)) for spec in styles]
    except ValueError as exc:
        raise UserError("`styles`", str(exc)) from None


def _fidelity(outs: list[torch.Tensor], teacher: list[torch.Tensor], items: list[tuple[Path, str | None]]
              ) -> dict[str, Any]:
    """Per (eval image, style) and mean PSNR / SSIM vs the teacher, per style when several were judged;
    ``identical`` when every output equals the teacher's."""
    per_image = [{"image": p.name, **({"style": label} if label is not None else {}), **fidelity(o, t)}
                 for o, t, (p, label) in zip(outs, teacher, items)]
    identical = all(torch.equal(o, t) for o, t in zip(outs, teacher))
    result = {"identical_to_teacher": identical, **_mean_fidelity(per_image), "per_image": per_image}
    labels = list(dict.fromkeys(label for _, label in items))
    if labels != [None]:
        result["per_style"] = [{"style": label, **_mean_fidelity([f for f in per_image if f["style"] == label])}
                               for label in labels]
    return result


def _mean_fidelity(scores: list[dict[str, Any]]) -> dict[str, float | None]:
    finite = [f["psnr_vs_teacher"] for f in scores if f["psnr_vs_teacher"] is not None]
    return {"psnr_vs_teacher": sum(finite) / len(finite) if finite else None,
            "ssim_vs_teacher": sum(f["ssim_vs_teacher"] for f in scores) / len(scores)}


def _fit(variant: Variant, img: torch.Tensor) -> torch.Tensor:
    """Resize to a fixed-shape artifact's input size when it differs from the evaluation size."""
    size = artifact_size(variant)
    if size and img.shape[-1] != size:
        return resize(img, (size, size))
    return img


def _style_reference(teacher: Variant, setting: str) -> str:
    """``image`` (the recipe's style image) or ``teacher_output`` (the teacher's own picture of each photo):
    ``auto`` picks the latter for a style bank (an imported multi-style network), whose styles have no image."""
    if setting != "auto":
        return setting
    family = get_family(teacher.family) if teacher.family else None
    return "teacher_output" if family is not None and family.style_bank else "image"


def _mean_losses(vgg, outputs, images, item_grams) -> dict[str, float]:
    losses = [perceptual_losses(vgg, o, c, g) for o, c, g in zip(outputs, images, item_grams)]
    return {k: sum(d[k] for d in losses) / len(losses) for k in ("style_loss", "content_loss")}


def _latency(variants, rows, style, settings: EvaluateStage, progress: bool) -> None:
    """Round-robin timing of all runnable variants at each latency size; the first size fills ``latency_ms``."""
    for size in settings.latency_sizes:
        x = torch.rand(1, 3, size, size)
        st = resize(style, (size, size)) if style.dim() == 4 else style  # a style image, or a style mix
        calls, clocks = {}, {}
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
            if getattr(run, "runner", None) is not None and run.runner.time_last is not None:
                clocks[i] = run.runner.time_last  # a browser page times itself: no transfer in the figure
        stats = measure_latency(calls, runs=settings.latency_runs, warmup=settings.warmup, progress=progress,
                                clocks=clocks)
        for i, stat in stats.items():
            variant, row = variants[i], rows[i]
            entry = stat | {"size": size, "threads": settings.threads}
            row["latency_sweep"].append(entry | {"runtime": variant.runtime})
            row["latency_ms"].setdefault(variant.runtime, entry)


def _no_grad(run, x):
    with torch.no_grad():
        return run(x)


def _memory(variants, rows, settings: EvaluateStage, style_path: Path | None, progress: bool) -> None:
    for variant, row in tqdm(list(zip(variants, rows)), desc="memory", disable=not progress, leave=False):
        # a peer's fixed extra inputs live in this process only; a browser's memory is not this process's
        if not variant.measurable or variant.is_peer or variant.runtime != variant.own_runtime:
            continue
        size = artifact_size(variant) or settings.latency_sizes[0]  # a fixed-shape file runs at its own size only
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


def pareto_front(points: dict[Any, tuple[float, float]]) -> set[Any]:
    """Keys of the (latency, fidelity) points no other point beats: at least as fast and as faithful, better in one."""
    return {i for i, (lat, fid) in points.items()
            if not any(ol <= lat and of >= fid and (ol < lat or of > fid) for j, (ol, of) in points.items() if j != i)}


def qualifies(row: dict[str, Any], worst: str, min_psnr_db: float | None) -> bool:
    """Graded ``worst`` or better, and (when a dB budget is given) at least that close in PSNR too."""
    judged = (row["quality"].get("judge") or {}).get("grade")
    if judged is None or GRADES.index(judged) > GRADES.index(worst):
        return False
    psnr = math.inf if row["quality"].get("identical_to_teacher") else row["quality"].get("psnr_vs_teacher")
    return min_psnr_db is None or (psnr is not None and psnr >= min_psnr_db)


# p50s within 5 % are one speed: the same variant read up to 7 % apart between harness settings
# (benchmarks/bench_latency_harness.py), so a smaller gap must not outrank fidelity.
LATENCY_TIE = 1.05


def fastest(indices: list[int], points: dict[int, tuple[float, float]]) -> int | None:
    """The fastest of ``indices``; of those within ``LATENCY_TIE`` of it, the nearest to the teacher."""
    if not indices:
        return None
    best = min(points[i][0] for i in indices)
    return max((i for i in indices if points[i][0] <= best * LATENCY_TIE), key=lambda i: (points[i][1], -points[i][0]))


def rank(rows: list[dict[str, Any]], worst: str = "close", min_psnr_db: float | None = None) -> dict[str, Any]:
    """Star the Pareto frontier (latency p50 on own runtime vs perceptual distance) and pick the verdict.

    The verdict is the fastest variant graded ``worst`` or better (and within ``min_psnr_db`` when given; of
    those as fast within ``LATENCY_TIE``, the nearest to the teacher); signed loss deltas play no part. Per runtime: the fastest indistinguishable and the fastest close variant, with
    the speed-up over the teacher on that same runtime. Peers are measured beside the variants, never ranked.
    """
    points = {}
    for i, row in enumerate(rows):
        if row.get("kind") == "peer":
            continue
        lat = row["latency_ms"].get(row["runtime"], {}).get("p50")
        distance = perceptual_bands(row)
        if lat is not None and distance is not None:
            points[i] = (lat, -distance)
    front = pareto_front(points)
    for i in points:
        rows[i]["pareto"] = i in front
    within = [i for i in points if qualifies(rows[i], worst, min_psnr_db)]
    verdict = fastest(within, points)
    if verdict is not None:
        rows[verdict]["verdict"] = True
    closest = max(points, key=lambda i: (points[i][1], -points[i][0])) if points else None
    budget = f" and PSNR >= {min_psnr_db:g} dB" if min_psnr_db is not None else ""
    return {
        "measure": FRONTIER_MEASURE,
        "measure_description": "the judge's perceptual distance of the variant's picture from the teacher's on the "
                               "held-out photos, in units of the teacher's same-picture band (0 = identical); "
                               f"verdict: the fastest variant graded {worst} or better{budget} (of those within "
                               f"{round(100 * (LATENCY_TIE - 1))} % of its speed, the nearest to the teacher)",
        "grade": worst,
        "min_psnr_db": min_psnr_db,
        "frontier": [rows[i]["name"] for i in sorted(points, key=lambda i: points[i][0]) if rows[i]["pareto"]],
        "verdict": rows[verdict]["name"] if verdict is not None else None,
        "closest": rows[closest]["name"] if verdict is None and closest is not None else None,
        "within_budget": [rows[i]["name"] for i in sorted(within, key=lambda i: points[i][0])],
        "per_runtime": _per_runtime(rows, points, min_psnr_db),
    }


def _per_runtime(rows, points, min_psnr_db: float | None) -> list[dict[str, Any]]:
    """What to ship on each runtime: its fastest indistinguishable and fastest close variant, each with its
    speed-up over the teacher exported to that runtime (None when the teacher was not built for it)."""
    out = []
    for runtime in dict.fromkeys(rows[i]["runtime"] for i in points):
        here = sorted((i for i in points if rows[i]["runtime"] == runtime), key=lambda i: points[i][0])
        baseline = next((i for i in here if rows[i].get("teacher_weights")), None)
        entry: dict[str, Any] = {"runtime": runtime,
                                 "teacher": rows[baseline]["name"] if baseline is not None else None}
        for worst in ("indistinguishable", "close"):
            pick = fastest([i for i in here if qualifies(rows[i], worst, min_psnr_db)], points)
            speedup = points[baseline][0] / points[pick][0] if pick is not None and baseline is not None else None
            entry[worst] = None if pick is None else {"name": rows[pick]["name"], "speedup_vs_teacher": speedup}
        out.append(entry)
    return out


def _export_entry(variant: Variant, root: Path | None) -> dict[str, Any]:
    m = variant.manifest
    parity = m.get("parity") or {}
    return {
        "name": variant.name,
        "format": m.get("format", variant.path.suffix.lstrip(".")),
        "precision": m.get("precision"),
        "path": display_path(variant.path, root),
        "manifest": display_path(variant.manifest_path, root) if variant.manifest_path else None,
        "size_bytes": size_on_disk(variant.path),
        "parity": {
            "runtime": parity.get("runtime"),
            "psnr_db": parity.get("psnr_db"),
            "passed": parity.get("passed"),
        },
    }
