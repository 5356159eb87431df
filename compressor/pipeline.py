"""Runs a recipe: stage after stage, each writing its artifact into ``runs/<name>/<stage>/``.

A stage is skipped when its own settings and everything upstream are
unchanged since it last completed (``--force`` re-runs everything). This is
the app layer: it may import ``exports`` and ``evaluation`` (the library in
``compressor`` may not).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from compressor.config import Recipe
from compressor.data import load_image, resolve_images, resolve_style
from compressor.distill import distill_stage
from compressor.errors import UserError, user_error
from compressor.io import atomic_write
from compressor.losses import style_grams
from compressor.models import VGG19LossNet, load_vgg19
from compressor.models.checkpoint import resolve_model_path
from compressor.prune import prune_stage
from compressor.teacher import model_stage
from evaluation.search import search_stage
from evaluation.stage import evaluate_stage
from exports.quantize import quantize_stage
from exports.stage import export_stage

log = logging.getLogger(__name__)

# Stage name -> function; each takes a RunContext and writes into ctx.stage_dir(name).
STAGES: dict[str, Callable[[RunContext], Any]] = {
    "model": model_stage,
    "prune": prune_stage,
    "search": search_stage,
    "distill": distill_stage,
    "quantize": quantize_stage,
    "export": export_stage,
    "evaluate": evaluate_stage,
}
STAGE_DIRS = {
    "model": "teacher",
    "prune": "pruned",
    "search": "search",
    "distill": "distilled",
    "quantize": "quantized",
    "export": "exports",
    "evaluate": "evaluation",
}
STAGE_STAMP = ".stage.json"


@dataclass
class RunContext:
    """What every stage needs: the recipe, the run folder, the reference loss network and the style."""

    recipe: Recipe
    run_dir: Path
    force: bool = False
    progress: bool = True
    resume: bool = False
    stamps: dict[str, str] = field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / STAGE_DIRS[stage]

    @cached_property
    def loss_network(self) -> VGG19LossNet:
        """The reference, uncompressed VGG19: the judge of every quality number in this run."""
        return load_vgg19(self.recipe.loss_network, allow_fallback=self.recipe.allow_random_loss_network)

    @cached_property
    def style_image(self) -> torch.Tensor:
        return load_image(resolve_style(self.recipe.style), size=self.recipe.style_size).unsqueeze(0)

    @cached_property
    def style_grams(self) -> dict[str, torch.Tensor]:
        return style_grams(self.loss_network, self.style_image)

    def latest_model_dir(self) -> Path:
        """The newest float model this run has produced (distilled > pruned > teacher)."""
        for stage in ("distill", "prune", "model"):
            d = self.stage_dir(stage)
            if (d / "spec.json").is_file() and stage in self.stamps:
                return d
        raise FileNotFoundError(f"{self.run_dir}: no model produced yet (the model stage writes teacher/)")


# Sections a stage reads besides its own: the search trains with distill's settings, calibrates as quantize does.
_ALSO_READS = {"search": ("distill", "quantize")}


def _stage_hash(recipe: Recipe, stage: str, upstream: str) -> str:
    globals_ = recipe.model_dump(include={"style", "style_size", "content", "loss_network"})
    data = {"stage": getattr(recipe, stage).model_dump(mode="json"), "globals": globals_, "up": upstream}
    if stage in _ALSO_READS:
        data["reads"] = recipe.model_dump(mode="json", include=set(_ALSO_READS[stage]))
    payload = json.dumps(data, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_stamp(path: Path, digest: str, status: str) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps({"hash": digest, "status": status}) + "\n"))


def preflight(recipe: Recipe) -> None:
    """Check the recipe's files before any stage runs; errors name the recipe key."""
    checks = [("style", lambda: resolve_style(recipe.style))]
    if recipe.model.train is not None or recipe.distill is not None or recipe.prune is not None:
        checks.append(("content", lambda: resolve_images(recipe.content, "train")))
    for key in ("path", "adain_decoder"):
        value = getattr(recipe.model, key)
        if value is not None:
            checks.append((f"model.{key}", lambda value=value: _exists(resolve_model_path(value))))
    if recipe.distill is not None and recipe.distill.teacher_onnx:
        checks.append(("distill.teacher_onnx", lambda: _exists(resolve_model_path(recipe.distill.teacher_onnx))))
    for key, check in checks:
        try:
            check()
        except (OSError, ValueError) as exc:
            known = user_error(exc)
            raise UserError(key, known.line() if known else str(exc), "fix it in the recipe or with --set") from None


def _exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")


def clean_failed_stage(stage_dir: Path) -> None:
    """Remove what a failed stage wrote, so nothing looks finished; training checkpoints stay for a resume."""
    if not stage_dir.is_dir():
        return
    for path in sorted(stage_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.name not in _KEPT_ON_FAILURE:
            path.unlink()


_KEPT_ON_FAILURE = {"checkpoint.pt", "train_log.csv", STAGE_STAMP}


def run_recipe(recipe: Recipe, out_root: Path = Path("runs"), force: bool = False, progress: bool = True) -> Path:
    """Run every stage the recipe names, in order; returns the run folder.

    A stage that fails leaves nothing that looks finished (its stamp says ``running``, so an unchanged
    re-run resumes from its training checkpoint); the error names the stage.
    """
    preflight(recipe)
    ctx = RunContext(recipe=recipe, run_dir=Path(out_root) / recipe.name, force=force, progress=progress)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(ctx.run_dir / "recipe.json", lambda p: p.write_text(recipe.model_dump_json(indent=2)))
    upstream = ""
    for stage, run in STAGES.items():
        if getattr(recipe, stage) is None:
            continue
        digest = _stage_hash(recipe, stage, upstream)
        stage_dir = ctx.stage_dir(stage)
        stamp_path = stage_dir / STAGE_STAMP
        stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
        same = stamp.get("hash") == digest and not force
        if same and stamp.get("status") == "done":
            log.info("stage %s: unchanged, skipped (use --force to re-run)", stage)
        else:
            # An interrupted stage with unchanged inputs resumes; anything else starts clean.
            ctx.resume = same
            if not same and stage_dir.exists():
                shutil.rmtree(stage_dir)
            log.info("stage %s: %s", stage, "resuming" if same else "running")
            write_stamp(stamp_path, digest, "running")
            try:
                run(ctx)
            except BaseException as exc:
                clean_failed_stage(stage_dir)
                known = user_error(exc) if isinstance(exc, Exception) else None
                if known is None:
                    raise
                raise UserError(f"stage {stage}", known.line(), "its partial output was removed; fix and run again"
                                ) from exc
            write_stamp(stamp_path, digest, "done")
        ctx.stamps[stage] = digest
        upstream = digest
    return ctx.run_dir
