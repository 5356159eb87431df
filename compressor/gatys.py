"""Gatys et al. 2016 iterative style transfer: optimise the pixels themselves.

Slow but model-free, so it is also the way to see what a (pruned) loss
network still knows: run it with that network, judge the result with the
reference one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from compressor.images import fit_longest
from compressor.losses import LossWeights, StyleTransferLoss
from compressor.models.vgg import VGG19LossNet


@dataclass
class GatysConfig:
    steps: int = 300
    optimizer: Literal["adam", "lbfgs"] = "lbfgs"
    lr: float | None = None  # default: 1.0 for L-BFGS, 0.02 for Adam (pixels live in [0, 1])
    init: Literal["content", "noise"] = "content"
    weights: LossWeights = field(default_factory=LossWeights)
    scales: list[int] = field(default_factory=list)  # longest sides, coarse to fine; empty = content size only
    snapshot_every: int = 0
    seed: int = 0


def stylize_gatys(
    content: torch.Tensor,
    style_grams: dict[str, torch.Tensor],
    vgg: VGG19LossNet,
    config: GatysConfig,
    snapshot: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[float]]:
    """Stylise a (1, 3, H, W) content image; returns the image and the total loss after every step.

    With ``config.scales`` the optimisation runs coarse to fine, each scale
    starting from the previous result upsampled (multi-scale Gatys).
    """
    criterion = StyleTransferLoss(vgg, style_grams, config.weights)
    scales = sorted(config.scales) or [max(content.shape[-2:])]
    gen = torch.Generator().manual_seed(config.seed)
    image: torch.Tensor | None = None
    history: list[float] = []
    step_offset = 0
    for longest in scales:
        target = fit_longest(content, longest) if config.scales else content
        with torch.no_grad():
            target_features = vgg(target)
        if image is None:
            image = target.clone() if config.init == "content" else torch.rand(target.shape, generator=gen)
        else:
            image = F.interpolate(image, size=target.shape[-2:], mode="bilinear", align_corners=False)
        image = image.detach().requires_grad_(True)
        history += _optimise(image, target, target_features, criterion, config, snapshot, step_offset, progress)
        step_offset += config.steps
    return image.detach().clamp(0, 1), history


def _optimise(image, content, content_features, criterion, config, snapshot, offset, progress) -> list[float]:
    if config.optimizer == "lbfgs":
        optimizer = torch.optim.LBFGS([image], lr=config.lr or 1.0, max_iter=1, history_size=50)
    else:
        optimizer = torch.optim.Adam([image], lr=config.lr or 0.02)
    history: list[float] = []
    bar = tqdm(range(config.steps), disable=not progress, desc=f"gatys {tuple(image.shape[-2:])}")
    for step in bar:
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = criterion(image, content, content_features)["total"]
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        with torch.no_grad():
            image.clamp_(0, 1)
        history.append(float(loss.detach()))
        bar.set_postfix(loss=f"{history[-1]:.4g}")
        if snapshot and config.snapshot_every and (step + 1) % config.snapshot_every == 0:
            snapshot(offset + step + 1, image.detach().clamp(0, 1))
    return history


def snapshot_writer(directory: Path) -> Callable[[int, torch.Tensor], None]:
    """Save intermediate results as ``step_000100.png`` ... in ``directory``."""
    from compressor.data import save_image

    def write(step: int, image: torch.Tensor) -> None:
        save_image(image, Path(directory) / f"step_{step:06d}.png")

    return write
