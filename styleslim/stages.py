"""The recipe's stages: each takes the run's context and writes into its stage folder.

The library below (``compressor``, ``exports``, ``evaluation``) takes models, configs and data; these functions
are where a recipe and a run folder become those.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.config import DistillStage, EvaluateStage, PruneStage
from compressor.data import ContentCrops, load_image, resolve_images, resolve_style, sample_content_paths
from compressor.distill import (
    SEARCH_WINNER,
    TrainingRun,
    distill_teacher,
    make_objective,
    named_student,
    prepare_run,
    train,
)
from compressor.errors import UserError
from compressor.models import get_family, load_any, load_model, parse_spec, save_model
from compressor.models.checkpoint import SPEC_FILE, resolve_model_path
from compressor.models.onnx_import import verify_import
from compressor.prune import Finetune, prune_dir
from compressor.teacher import write_previews
from evaluation.evaluate import display_path, evaluate
from evaluation.report import write_reports
from evaluation.search import RESULT_FILE as SEARCH_RESULT
from evaluation.search import search_students
from evaluation.variants import discover, load_variant
from exports.backends import backend_for_format
from exports.quantize import quantize
from exports.stage import artifact_name, export_artifact, reuse_artifact
from styleslim.context import RunContext

log = logging.getLogger(__name__)


def model_stage(ctx: RunContext) -> None:
    """Recipe stage ``model``: write the teacher to ``teacher/``.

    A fresh teacher comes from its family's ``teacher`` hook (VGG19: the
    reference loss network itself; AdaIN: its encoder from it, only the
    decoder trains); it trains from scratch when ``model.train`` is set.
    """
    stage = ctx.recipe.model
    out = ctx.stage_dir("model")
    if stage.path:
        model = load_any(stage.path, stage.adain_decoder)
        loaded = get_family(model).name
        if "family" in stage.model_fields_set and loaded != stage.family:
            raise UserError("model.family", f"{stage.path} holds a {loaded} network, not {stage.family}",
                            f"set family: {loaded}, or leave it out")
        meta: dict = {"source": stage.path}
        if resolve_model_path(stage.path).suffix == ".onnx":
            meta["import_check"] = verify_import(resolve_model_path(stage.path), model, sample_content_paths("eval"))
            log.info("import parity vs ONNX Runtime: min %.1f dB", meta["import_check"]["min_psnr_db"])
        if stage.select_style is not None:
            model = get_family(model).select_style(model, stage.select_style)
            meta["selected_style"] = stage.select_style
        save_model(model, out, meta=meta)
        write_previews(model, out / "samples", style=ctx.style_image)
        return
    family = get_family(stage.family)
    spec = parse_spec({"family": stage.family, "style": Path(str(ctx.recipe.style)).stem, **stage.spec})
    meta = {"style": ctx.recipe.style, "loss_network": ctx.loss_network.weights_source}
    torch.manual_seed(stage.train.seed if stage.train is not None else 0)  # seeded initial weights
    model, source = family.teacher(spec, ctx.loss_network, ctx.recipe.loss_network,
                                   ctx.recipe.allow_random_loss_network)
    if stage.train is not None:
        data = ContentCrops(resolve_images(ctx.recipe.content, "train"), stage.train.crop)
        run = prepare_run(ctx.loss_network, grams=ctx.style_grams)
        objective = make_objective(model, None, stage.train, run.vgg, run.grams)
        train(model, objective, data, stage.train, out, resume=ctx.resume, meta=meta, progress=ctx.progress,
              device=run.device)
    else:
        save_model(model, out, meta={**meta, "source": source})
    write_previews(model, out / "samples", style=ctx.style_image)


def prune_stage(ctx: RunContext) -> None:
    """Recipe stage ``prune``: teacher/ -> pruned/, fine-tuning against the teacher between iterative steps."""
    config: PruneStage = ctx.recipe.prune
    if config.finetune_steps_between:  # the recipe allows it only between several iterative steps
        meta = {"loss_network": ctx.loss_network.weights_source}
        prune_dir(ctx.stage_dir("model"), ctx.stage_dir("prune"), config, _pipeline_finetune(ctx, config), meta,
                  content=ctx.recipe.content)
    else:
        prune_dir(ctx.stage_dir("model"), ctx.stage_dir("prune"), config, content=ctx.recipe.content)


def _pipeline_finetune(ctx: RunContext, config: PruneStage) -> Finetune:
    """Distil the partly pruned model from the model stage's teacher for ``finetune_steps_between`` steps.

    The recipe's distill settings (or their defaults) give the loss weights, batch, crop and learning rate; the
    data are plain crops of the training photos (no ``paired_size``, ``color_jitter`` or ONNX teacher: a short
    repair between prune steps, not the distillation).
    """
    n = config.finetune_steps_between
    train_config = (ctx.recipe.distill or DistillStage()).model_copy(update={"steps": n, "checkpoint_every": n})
    data = ContentCrops(resolve_images(ctx.recipe.content, "train"), train_config.crop)
    run = prepare_run(ctx.loss_network, load_model(ctx.stage_dir("model")), ctx.style_grams)

    def finetune(model: nn.Module, step: int) -> None:
        objective = make_objective(model, run.teacher, train_config, run.vgg, run.grams)
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as tmp:
            train(model, objective, data, train_config, tmp, progress=ctx.progress, device=run.device)
        log.info("prune: fine-tuned %d steps after pruning step %d", n, step + 1)

    return finetune


def distill_setup(ctx: RunContext) -> tuple[TrainingRun, torch.utils.data.Dataset]:
    """The recipe's teacher on this rank's device, and the training data (teacher pairs when ``paired_size``).

    The distill stage and the student search share it: every student learns from the same data."""
    config = ctx.recipe.distill
    run = prepare_run(ctx.loss_network, distill_teacher(config, ctx.stage_dir("model")), ctx.style_grams)
    photos = resolve_images(ctx.recipe.content, "train")
    if config.paired_size:
        from compressor.blackbox import TeacherPairs

        return run, TeacherPairs(photos, run.teacher, config.paired_size, config.crop)
    return run, ContentCrops(photos, config.crop, color_jitter=config.color_jitter)


def distill_meta(ctx: RunContext, student_from: str) -> dict:
    config = ctx.recipe.distill
    return {"student_from": student_from, "teacher": config.teacher_onnx or str(ctx.stage_dir("model")),
            "teacher_inputs": config.teacher_inputs, "style": ctx.recipe.style,
            "loss_network": ctx.loss_network.weights_source}


def distill_stage(ctx: RunContext) -> None:
    """Recipe stage ``distill``: the pruned model (or a copy of the teacher, a named ``student``, or the student
    search's winner, trained on from its brief run) learns from the teacher."""
    config = ctx.recipe.distill
    run, data = distill_setup(ctx)
    if ctx.recipe.search is not None:
        source = ctx.stage_dir("search") / SEARCH_WINNER
        student, student_from = load_model(source), f"search winner {source}"
    elif config.student is not None:
        student = named_student(config.student, config.seed, "distill.student", run.teacher)
        student_from = f"fresh {config.student.family} ({config.student.init} init)"
    else:
        source = ctx.stage_dir("prune") if ctx.recipe.prune is not None else ctx.stage_dir("model")
        student, student_from = load_model(source), str(source)
    named = ctx.recipe.search is not None or config.student is not None
    objective = make_objective(student, run.teacher, config, run.vgg, run.grams,
                               any_teacher=named or config.teacher_onnx is not None)
    train(student, objective, data, config, ctx.stage_dir("distill"), resume=ctx.resume,
          meta=distill_meta(ctx, student_from), progress=ctx.progress, device=run.device)


def search_stage(ctx: RunContext) -> dict[str, Any]:
    """Recipe stage ``search``: distil, deploy, time and judge every candidate; the winner goes to ``search/winner``."""
    run, data = distill_setup(ctx)
    calibration = ctx.recipe.quantize.calibration if ctx.recipe.quantize else "samples"
    return search_students(ctx.recipe.search, ctx.recipe.distill, run, data, ctx.stage_dir("search"), calibration,
                           distill_meta(ctx, "search candidate"), root=ctx.run_dir, resume=ctx.resume,
                           progress=ctx.progress)


def quantize_stage(ctx: RunContext) -> None:
    """Pipeline stage: quantize the run's newest float model into ``quantized/``."""
    settings = ctx.recipe.quantize
    model_dir, teacher_dir = ctx.latest_model_dir(), ctx.stage_dir("model")
    judged_by_teacher = settings.has_budget and model_dir != teacher_dir and (teacher_dir / SPEC_FILE).is_file()
    teacher = load_model(teacher_dir) if judged_by_teacher else None
    quantize(model_dir, ctx.stage_dir("quantize"), settings, ctx.loss_network, ctx.style_grams,
             resume=ctx.resume, progress=ctx.progress, teacher=teacher)


def export_stage(ctx: RunContext) -> None:
    """Pipeline stage: export the run's newest float model to every format the recipe asks for, and the teacher
    to every format this machine can run (``exports/teacher/``): each runtime's speed-up baseline in the report.

    A float artifact the quantize stage already built for the same model is copied, not rebuilt.
    """
    cfg = ctx.recipe.export
    model_dir = ctx.latest_model_dir()
    out_dir = ctx.stage_dir("export")
    size = (cfg.size, cfg.size)
    for fmt in cfg.formats:
        name = artifact_name(fmt, cfg.precision or backend_for_format(fmt).default_precision, cfg.layout)
        shared = ctx.stage_dir("quantize") / fmt / "float" / name
        reused = None
        if ctx.recipe.quantize and cfg.layout == "nchw":
            reused = reuse_artifact(shared, model_dir, out_dir, size, shared.relative_to(ctx.run_dir).as_posix())
        path, manifest = reused or export_artifact(model_dir, fmt, out_dir, precision=cfg.precision, size=size,
                                                   layout=cfg.layout)
        p = manifest["parity"]
        log.info("export %s: %s; parity %s", fmt, path, "PSNR %.1f dB" % p["psnr_db"] if "psnr_db" in p
                 else p.get("predictions"))
    teacher_dir = ctx.stage_dir("model")
    if model_dir != teacher_dir and (teacher_dir / SPEC_FILE).is_file():
        for fmt in cfg.formats:
            if backend_for_format(fmt).can_run():
                path, _ = export_artifact(teacher_dir, fmt, out_dir / "teacher", size=size, layout=cfg.layout)
                log.info("export %s: the teacher as %s (its speed-up baseline)", fmt, path)


def evaluate_stage(ctx: RunContext) -> dict[str, Any]:
    """Evaluate every variant this run's stages made or kept; reports go to the run folder, images to evaluation/."""
    settings = ctx.recipe.evaluate or EvaluateStage()
    current = [ctx.stage_dir(stage).name for stage in ctx.stamps]
    variants, skipped = discover(ctx.run_dir, settings.show_intermediate, current)
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
    took = {stage: stamp["seconds"] for stage, stamp in ctx.stamps.items() if "seconds" in stamp}
    report["run"] = {"name": ctx.recipe.name, "dir": ctx.run_dir.name, "stage_seconds": took}
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
    settings: EvaluateStage | None = None,
    style_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Ad-hoc evaluation of model folders / artifacts against ``teacher`` on ``settings.images``; writes reports
    into ``out_dir``."""
    settings = settings or EvaluateStage()
    ref = load_variant(teacher)
    ref.name = "teacher"
    variants = [ref] + [load_variant(t) for t in targets]
    style_path = resolve_style(style)
    report = evaluate(
        variants,
        vgg,
        load_image(style_path, size=style_size).unsqueeze(0),
        resolve_images(settings.images, "eval"),
        settings,
        Path(out_dir) / "evaluation",
        style_path=style_path,
        progress=progress,
        root=Path(out_dir),
    )
    write_reports(report, Path(out_dir))
    return report


# Stage name -> function, in the order a recipe runs them.
STAGES = {
    "model": model_stage,
    "prune": prune_stage,
    "search": search_stage,
    "distill": distill_stage,
    "quantize": quantize_stage,
    "export": export_stage,
    "evaluate": evaluate_stage,
}
