"""The teacher: load an existing model, or build a fresh one and train it on a style."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from compressor.data import ContentCrops, load_image, resolve_images, resolve_style
from compressor.distill import TrainConfig, train, transformer_objective
from compressor.losses import style_grams
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
    style: str,
    content: str,
    out_dir: str | Path,
    config: TrainConfig,
    vgg: VGG19LossNet,
    style_size: int = 256,
    stn: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train a fresh TransformerNet on ``style`` (path or bundled name) and save it to ``out_dir``."""
    style_path = resolve_style(style)
    grams = style_grams(vgg, load_image(style_path, size=style_size).unsqueeze(0))
    model = TransformerNet(TransformerNetSpec(style=style_path.stem, stn=STNSpec() if stn else None))
    data = ContentCrops(resolve_images(content, "train"), config.crop)
    meta = {"style": str(style_path), "loss_network": vgg.weights_source}
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
