"""The teacher: load an existing model, or build a fresh one and train it on a style."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from compressor.config import TrainConfig
from compressor.data import ContentCrops, resolve_images, sample_content_paths
from compressor.distill import make_objective, prepare_run, train
from compressor.models import STNSpec, TransformerNetSpec, create_model, get_family, load_any, parse_spec, save_model
from compressor.models.checkpoint import resolve_model_path
from compressor.models.onnx_import import verify_import
from compressor.stylize import model_stylizer, stylize_files

log = logging.getLogger(__name__)


def train_transformer(
    grams: dict[str, torch.Tensor],
    style_name: str,
    content: str,
    out_dir: str | Path,
    config: TrainConfig,
    vgg: nn.Module,
    stn: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train a fresh TransformerNet towards a style's Gram matrices and save it to ``out_dir``."""
    torch.manual_seed(config.seed)  # the initial weights are part of the run: same seed, same model
    model = create_model(TransformerNetSpec(style=style_name, stn=STNSpec() if stn else None))
    data = ContentCrops(resolve_images(content, "train"), config.crop)
    meta = {"style": style_name, "loss_network": vgg.weights_source}
    run = prepare_run(vgg, grams=grams)
    objective = make_objective(model, None, config, run.vgg, run.grams)
    return train(model, objective, data, config, out_dir, resume, meta, progress, device=run.device)


def model_stage(ctx) -> None:
    """Recipe stage ``model``: write the teacher to ``teacher/``.

    A fresh teacher comes from its family's ``teacher`` hook (VGG19: the
    reference loss network itself; AdaIN: its encoder from it, only the
    decoder trains); it trains from scratch when ``model.train`` is set.
    """
    stage = ctx.recipe.model
    out = ctx.stage_dir("model")
    if stage.path:
        model = load_any(stage.path, stage.adain_decoder)
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


def write_previews(model: nn.Module, out: Path, style: torch.Tensor, size: int = 256) -> list[Path]:
    """Stylise the held-out sample photos so a person can look at what a model does (loss networks: nothing)."""
    if get_family(model).role == "loss_network":
        return []
    return stylize_files(model_stylizer(model, style), sample_content_paths("eval"), out, size=size, progress=False)
