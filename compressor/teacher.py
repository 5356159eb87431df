"""The teacher: load an existing model, or build a fresh one and train it on a style."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from compressor.config import TrainConfig
from compressor.data import ContentCrops, resolve_images, sample_content_paths
from compressor.distill import make_objective, prepare_run, train
from compressor.models import STNSpec, TransformerNetSpec, create_model, get_family
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


def write_previews(model: nn.Module, out: Path, style: torch.Tensor, size: int = 256) -> list[Path]:
    """Stylise the held-out sample photos so a person can look at what a model does (loss networks: nothing)."""
    if get_family(model).role == "loss_network":
        return []
    return stylize_files(model_stylizer(model, style), sample_content_paths("eval"), out, size=size, progress=False,
                         tile=0)  # small pictures, whole: the memory budget is for a user's big photos
