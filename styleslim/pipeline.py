"""Runs a recipe: stage after stage, each writing its artifact into ``runs/<name>/<stage>/``.

A stage is skipped when its own settings and everything upstream are
unchanged since it last completed (``--force`` re-runs everything). This is
the app layer (``styleslim``): the library below it never sees a run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from compressor.config import Recipe
from compressor.data import resolve_images, resolve_style
from compressor.errors import UserError, user_error
from compressor.io import atomic_write
from compressor.models import parse_spec
from compressor.models.checkpoint import resolve_model_path
from compressor.quantize import check_disjoint
from exports.quantize import check_runtimes
from styleslim.context import RunContext
from styleslim.stages import STAGES

log = logging.getLogger(__name__)

STAGE_STAMP = ".stage.json"


# What a stage reads besides its own section: the search trains with distill's settings and calibrates on
# quantize's images; the rest of quantize (float convs, budgets) must not re-run half an hour of training.
_ALSO_READS = {"search": {"distill": True, "quantize": {"calibration"}}}


def _stage_hash(recipe: Recipe, stage: str, upstream: str) -> str:
    globals_ = recipe.model_dump(include={"style", "style_size", "content", "loss_network"})
    data = {"stage": getattr(recipe, stage).model_dump(mode="json"), "globals": globals_, "up": upstream}
    if stage in _ALSO_READS:
        data["reads"] = recipe.model_dump(mode="json", include=_ALSO_READS[stage])
    payload = json.dumps(data, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_stamp(path: Path, digest: str, status: str, seconds: float | None = None) -> dict[str, Any]:
    """The stage's input hash and status; ``seconds``, the wall time its last run took (the profile of a run)."""
    stamp = {"hash": digest, "status": status} | ({"seconds": seconds} if seconds is not None else {})
    atomic_write(path, lambda p: p.write_text(json.dumps(stamp) + "\n"))
    return stamp


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
    for i, peer in enumerate(recipe.evaluate.peers if recipe.evaluate else []):
        checks.append((f"evaluate.peers.{i}.path", lambda peer=peer: _exists(resolve_model_path(peer.path))))
    for i, choice in enumerate(recipe.search.candidates if recipe.search else []):  # before any candidate trains
        checks.append((f"search.candidates.{i}", lambda choice=choice: parse_spec({"family": choice.family,
                                                                                   **choice.spec})))
    if recipe.quantize is not None:
        check_runtimes(recipe.quantize)  # its line names the key
    if recipe.evaluate is not None:
        def graded() -> list[Path]:
            return resolve_images(recipe.evaluate.images, "eval")

        checks.append(("evaluate.images", graded))
        if recipe.quantize is not None:  # a budget or calibration never tuned on the photos the report grades
            q = recipe.quantize
            checks += [
                ("quantize.images", lambda: check_disjoint(resolve_images(q.images, "val"), graded(), "quality")),
                ("quantize.calibration", lambda: check_disjoint(resolve_images(q.calibration, "train"), graded())),
            ]
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
            started = time.perf_counter()
            try:
                run(ctx)
            except BaseException as exc:
                clean_failed_stage(stage_dir)
                known = user_error(exc) if isinstance(exc, Exception) else None
                if known is None:
                    raise
                as_key = re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: f"{stage}.{m.group(1)}", known.line())
                raise UserError(f"stage {stage}", as_key, "its partial output was removed; fix and run again"
                                ) from exc
            stamp = write_stamp(stamp_path, digest, "done", round(time.perf_counter() - started, 1))
            log.info("stage %s: done in %.0f s", stage, stamp["seconds"])
        ctx.stamps[stage] = stamp
        upstream = digest
    return ctx.run_dir
