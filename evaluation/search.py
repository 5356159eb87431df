"""Recipe stage ``search``: which student to train longer, decided by measurement on the target runtime.

Each candidate (a family + spec, e.g. ``edge_net`` variants) is distilled briefly with the distill stage's
settings and data, put on ``search.runtime`` (fp32, or that runtime's own static / dynamic int8, calibrated
on training photos), timed round-robin in one process, and judged against the teacher's pictures of validation
photos (neither trained on nor reported by the evaluate stage) by the perceptual judge, in units of the teacher's
own same-picture band on them (``compressor.fidelity``); PSNR / SSIM are recorded beside. The fastest candidate
graded ``search.grade`` or better (and within the optional ``search.min_psnr_db``) wins; with none qualifying,
the one nearest the teacher in perceptual bands does, and ``search.json`` says so. The winner's model folder is copied to ``search/winner/``, where the distill
stage picks it up and trains it on. ``search.json`` holds every candidate (the frontier the report shows).
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from compressor.config import DistillStage, SearchStage
from compressor.data import CalibrationSample, resolve_images
from compressor.distill import SEARCH_WINNER, TrainingRun, make_objective, named_student, train
from compressor.errors import UserError
from compressor.fidelity import GRADES, calibrate, judge_outputs
from compressor.io import write_json
from compressor.judge import embed
from compressor.models import get_family
from compressor.quantize import calibration_set, equalize_norm_inputs
from evaluation.evaluate import display_path, pareto_front, square_image
from evaluation.latency import machine_info, measure_latency
from evaluation.metrics import fidelity, params_and_macs
from exports.backends.litert import quantize_tflite
from exports.backends.onnxruntime import quantize_onnx
from exports.runtime import load_runner
from exports.stage import export_artifact

log = logging.getLogger(__name__)
RESULT_FILE = "search.json"
_QUANTIZERS = {"onnx": quantize_onnx, "tflite": quantize_tflite}  # the runtime's own int8 quantizer


def search_students(search: SearchStage, config: DistillStage, run: TrainingRun, data: Dataset, out: Path,
                    calibration_images: str, meta: dict[str, Any], root: Path, resume: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Distil each candidate briefly on ``data`` from ``run.teacher``, deploy, time and judge it; copy the winner to
    ``out/winner``; write ``out/search.json`` (paths in it relative to ``root``) and return its content."""
    n_styles = get_family(run.teacher).n_styles(run.teacher) if hasattr(run.teacher, "spec") else 1
    if n_styles > 1:
        raise UserError("search", f"the search judges and times students of one style; this teacher holds {n_styles}",
                        "keep one style (model.select_style), or name a many-style student as distill.student")
    photo_paths = resolve_images(search.images, "val")
    photos = [square_image(p, search.size) for p in photo_paths]
    with torch.no_grad():
        targets = [run.teacher(x.to(run.device)).cpu().clamp(0, 1) for x in photos]
        references = [embed(t) for t in targets]
    teacher_band = calibrate(lambda x: run.teacher(x.to(run.device)).cpu(), photos, targets, references)
    calibration = calibration_set(calibration_images, search.size)[0] if search.mode == "static" else None
    brief = config.model_copy(update={"steps": search.steps, "checkpoint_every": search.steps})
    rows, calls = [], {}
    for i, choice in enumerate(search.candidates):
        folder = out / "candidates" / str(i)
        student = named_student(choice, config.seed, f"search.candidates.{i}", run.teacher)
        objective = make_objective(student, run.teacher, brief, run.vgg, run.grams, any_teacher=True)
        train(student, objective, data, brief, folder / "model", resume=resume, progress=progress, device=run.device,
              meta=meta | {"student_from": f"search candidate {i}: fresh {choice.family} ({choice.init} init)"})
        student = student.cpu().eval()
        artifact = deploy(student, search, folder, calibration)
        runner = load_runner(artifact, search.threads)
        with torch.no_grad():
            float_outputs = [student(x).clamp(0, 1) for x in photos]
            outputs = [torch.from_numpy(np.asarray(runner(x.numpy()))).clamp(0, 1) for x in photos]
            judged = judge_outputs(outputs, references, teacher_band)
            float_judged = judge_outputs(float_outputs, references, teacher_band)
        scores = [fidelity(o, t) for o, t in zip(outputs, targets)]
        calls[i] = functools.partial(runner, photos[0].numpy())
        example = get_family(student).example_inputs(student, search.size)
        params, macs = params_and_macs(student, example if isinstance(example, tuple) else (example,))
        rows.append({"candidate": i, "family": choice.family, "init": choice.init, "spec": student.current_spec().model_dump(
                        mode="json", exclude={"family", "style"}),
                     "model": display_path(folder / "model", root),
                     "artifact": display_path(artifact, root), "size_bytes": artifact.stat().st_size,
                     "params": params, "macs": macs, "judge": judged, "fp32_judge": float_judged,
                     "psnr_vs_teacher": _mean(scores, "psnr_vs_teacher"),
                     "ssim_vs_teacher": _mean(scores, "ssim_vs_teacher")})
    stats = measure_latency(calls, runs=search.latency_runs, warmup=2)
    for row in rows:
        row["latency_ms"] = stats[row["candidate"]]
    winner, within = pick(rows, search.grade, search.min_psnr_db)
    mark_frontier(rows)
    winner_dir = out / SEARCH_WINNER
    shutil.rmtree(winner_dir, ignore_errors=True)
    shutil.copytree(out / "candidates" / str(winner["candidate"]) / "model", winner_dir,
                    ignore=shutil.ignore_patterns("checkpoint.pt"))
    result = {"runtime": search.runtime, "mode": search.mode, "size": search.size, "steps": search.steps,
              "threads": search.threads, "grade": search.grade, "min_psnr_db": search.min_psnr_db,
              "calibration": teacher_band,
              "photos": [display_path(p, root) for p in photo_paths],
              "winner": winner["candidate"], "winner_within_budget": within,
              "candidates": rows, "machine": machine_info()}
    write_json(out / RESULT_FILE, result)
    log.info("search: candidate %d wins (%s, %.2f perceptual bands, %s; %.1f ms on %s %s)", winner["candidate"],
             "within the budget" if within else "none within the budget: the nearest",
             winner["judge"]["perceptual_bands"], winner["judge"]["grade"], winner["latency_ms"]["p50"], search.runtime,
             search.mode)
    return result


def deploy(student: torch.nn.Module, search, folder: Path, calibration: list[CalibrationSample] | None) -> Path:
    """The candidate as it would ship: exported to the runtime (parity-checked) and, unless fp32, quantized
    (static int8 after norm-input equalization, as the quantize stage does it)."""
    fmt = search.runtime
    if search.mode == "static":
        student = equalize_norm_inputs(student, calibration)[0]
    path, _ = export_artifact(student, fmt, folder / "float", size=(search.size, search.size))
    if search.mode == "fp32":
        return path
    return _QUANTIZERS[fmt](path, folder / f"model-int8-{search.mode}{path.suffix}", search.mode, calibration)


def pick(rows: list[dict[str, Any]], worst: str, min_psnr_db: float | None = None) -> tuple[dict[str, Any], bool]:
    """The fastest candidate graded ``worst`` or better (and within ``min_psnr_db`` when given), else the nearest
    to the teacher in perceptual bands; and whether it is within the budget."""
    within = [r for r in rows if GRADES.index(r["judge"]["grade"]) <= GRADES.index(worst)
              and (min_psnr_db is None or (r["psnr_vs_teacher"] is not None and r["psnr_vs_teacher"] >= min_psnr_db))]
    if within:
        return min(within, key=lambda r: r["latency_ms"]["p50"]), True
    return min(rows, key=lambda r: r["judge"]["perceptual_bands"]), False


def mark_frontier(rows: list[dict[str, Any]]) -> None:
    """``pareto``: no other candidate is both at least as fast and at least as near the teacher in perceptual
    bands (and better in one)."""
    front = pareto_front({i: (r["latency_ms"]["p50"], -r["judge"]["perceptual_bands"]) for i, r in enumerate(rows)})
    for i, row in enumerate(rows):
        row["pareto"] = i in front


def _mean(scores: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in scores]
    return None if any(v is None for v in values) else float(np.mean(values))
