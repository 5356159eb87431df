"""The teacher: load an existing model, or build a fresh one and train it on a style."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compressor.data import ContentCrops, resolve_images, sample_content_paths
from compressor.distill import TrainConfig, make_objective, train, transformer_objective
from compressor.models import (
    AdaINNet,
    STNSpec,
    TransformerNet,
    TransformerNetSpec,
    build_model,
    load_adain,
    load_fast_neural_style,
    load_model,
    load_vgg19,
    parse_spec,
    save_model,
)
from compressor.models.checkpoint import init_adain_encoder_from_vgg
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
    torch.manual_seed(config.seed)  # the initial weights are part of the run: same seed, same model
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
    """Recipe stage ``model``: write the teacher to ``teacher/``.

    VGG19 teachers are the reference loss network itself; AdaIN teachers get
    their encoder from it (and train only the decoder); TransformerNets train
    from scratch when ``model.train`` is set.
    """
    stage = ctx.recipe.model
    out = ctx.stage_dir("model")
    if stage.path:
        model = load_any(stage.path, stage.adain_decoder)
        save_model(model, out, meta={"source": stage.path})
        write_previews(model, out / "samples", style=ctx.style_image)
        return
    spec = parse_spec({"family": stage.family, "style": Path(str(ctx.recipe.style)).stem, **stage.spec})
    meta = {"style": ctx.recipe.style, "loss_network": ctx.loss_network.weights_source}
    if stage.family == "vgg19":
        model = load_vgg19(ctx.recipe.loss_network, spec, allow_fallback=ctx.recipe.allow_random_loss_network)
        save_model(model, out, meta={**meta, "source": model.weights_source})
        return
    torch.manual_seed(stage.train.seed if stage.train is not None else 0)
    model = build_model(spec)
    if isinstance(model, AdaINNet):
        init_adain_encoder_from_vgg(model, ctx.loss_network)
        model.encoder.requires_grad_(False)
    if stage.train is not None:
        data = ContentCrops(resolve_images(ctx.recipe.content, "train"), stage.train.crop)
        objective = make_objective(model, None, stage.train, ctx.loss_network, ctx.style_grams)
        train(model, objective, data, stage.train, out, resume=ctx.resume, meta=meta, progress=ctx.progress)
    else:
        save_model(model, out, meta={**meta, "source": "random init"})
    write_previews(model, out / "samples", style=ctx.style_image)


def write_previews(model: nn.Module, out: Path, style: torch.Tensor, size: int = 256) -> list[Path]:
    """Stylise the held-out sample photos so a person can look at what a model does."""
    from compressor.stylize import model_stylizer, stylize_files

    if not isinstance(model, (AdaINNet, TransformerNet)):
        return []
    return stylize_files(model_stylizer(model, style), sample_content_paths("eval"), out, size=size, progress=False)
