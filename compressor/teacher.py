"""The teacher: load an existing model, or build a fresh one and train it on a style."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compressor.data import ContentCrops, resolve_images, sample_content_paths
from compressor.distill import TrainConfig, train, transformer_objective
from compressor.models import (
    STNSpec,
    TransformerNet,
    TransformerNetSpec,
    build_model,
    load_adain,
    load_fast_neural_style,
    load_model,
    parse_spec,
    save_model,
)
from compressor.models.vgg import VGG19LossNet


def train_transformer(
    grams: dict[str, torch.Tensor],
    style_name: str,
    content: str,
    out_dir: str | Path,
    config: TrainConfig,
    vgg: VGG19LossNet,
    stn: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train a fresh TransformerNet towards a style's Gram matrices and save it to ``out_dir``."""
    model = TransformerNet(TransformerNetSpec(style=style_name, stn=STNSpec() if stn else None))
    data = ContentCrops(resolve_images(content, "train"), config.crop)
    meta = {"style": style_name, "loss_network": vgg.weights_source}
    return train(model, transformer_objective(config, vgg, grams), data, config, out_dir, resume, meta, progress)


def load_any(path: str | Path, adain_decoder: str | Path | None = None) -> nn.Module:
    """A model folder, a pytorch/examples fast_neural_style ``.pth``, or AdaIN ``vgg_normalised.pth`` + decoder."""
    path = Path(path)
    if path.is_dir():
        return load_model(path)
    if adain_decoder is not None:
        return load_adain(path, adain_decoder)
    if path.suffix in (".pth", ".pt", ".safetensors"):
        return load_fast_neural_style(path)
    raise FileNotFoundError(f"{path}: not a model folder (spec.json + weights.safetensors) or a .pth checkpoint")


def model_stage(ctx) -> None:
    """Recipe stage ``model``: write the teacher to ``teacher/``."""
    stage = ctx.recipe.model
    out = ctx.stage_dir("model")
    if stage.path:
        model = load_any(stage.path, stage.adain_decoder)
        save_model(model, out, meta={"source": stage.path})
        return
    spec = parse_spec({"family": stage.family, **stage.spec})
    if stage.train is None:
        save_model(build_model(spec), out, meta={"source": "random init"})
        return
    if stage.family != "transformer_net":
        raise ValueError(f"model.train: training from scratch is implemented for transformer_net, not {stage.family}")
    model = build_model(spec.model_copy(update={"style": Path(str(ctx.recipe.style)).stem}))
    data = ContentCrops(resolve_images(ctx.recipe.content, "train"), stage.train.crop)
    objective = transformer_objective(stage.train, ctx.loss_network, ctx.style_grams)
    meta = {"style": ctx.recipe.style, "loss_network": ctx.loss_network.weights_source}
    train(model, objective, data, stage.train, out, resume=ctx.resume, meta=meta, progress=ctx.progress)
    write_previews(model, out / "samples")


def write_previews(model: nn.Module, out: Path, size: int = 256) -> list[Path]:
    """Stylise the held-out sample photos so a person can look at what a model does."""
    from compressor.stylize import stylize_files

    return stylize_files(torch.no_grad()(model.eval()), sample_content_paths("eval"), out, size=size, progress=False)
