"""Recipe stage ``evaluate`` and the ad-hoc ``styleslim evaluate``: find variants, measure, write reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from compressor.config import EvaluateStage
from compressor.data import load_image, resolve_images, resolve_style
from evaluation.evaluate import display_path, evaluate
from evaluation.report import write_reports
from evaluation.search import RESULT_FILE as SEARCH_RESULT
from evaluation.variants import discover, load_variant


def evaluate_stage(ctx) -> dict[str, Any]:
    """Evaluate every variant in the run folder; reports go to the run folder, images to evaluation/."""
    settings = ctx.recipe.evaluate or EvaluateStage()
    variants, skipped = discover(ctx.run_dir, settings.show_intermediate)
    if not variants or variants[0].name != "teacher":
        raise FileNotFoundError(f"{ctx.run_dir / 'teacher'}: no teacher model; the evaluate stage needs the model stage")
    report = evaluate(
        variants,
        ctx.loss_network,
        ctx.style_image,
        resolve_images(settings.images, "eval"),
        settings,
        ctx.stage_dir("evaluate"),
        style_path=resolve_style(ctx.recipe.style),
        progress=ctx.progress,
        root=ctx.run_dir,
    )
    report["run"] = {"name": ctx.recipe.name, "dir": ctx.run_dir.name}
    search = ctx.stage_dir("search") / SEARCH_RESULT
    if ctx.recipe.search is not None and search.is_file():
        report["search"] = json.loads(search.read_text())
    report["skipped"] = [s | {"path": display_path(s["path"], ctx.run_dir)} for s in skipped]
    write_reports(report, ctx.run_dir)
    return report


def evaluate_paths(
    targets: list[str | Path],
    teacher: str | Path,
    vgg: nn.Module,
    out_dir: Path,
    style: str = "starry_night",
    images: str = "samples",
    settings: EvaluateStage | None = None,
    style_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Ad-hoc evaluation of model folders / artifacts against ``teacher``; writes reports into ``out_dir``."""
    settings = settings or EvaluateStage(images=images)
    ref = load_variant(teacher)
    ref.name = "teacher"
    variants = [ref] + [load_variant(t) for t in targets]
    style_path = resolve_style(style)
    report = evaluate(
        variants,
        vgg,
        load_image(style_path, size=style_size).unsqueeze(0),
        resolve_images(images, "eval"),
        settings,
        Path(out_dir) / "evaluation",
        style_path=style_path,
        progress=progress,
        root=Path(out_dir),
    )
    write_reports(report, Path(out_dir))
    return report
