"""A recipe run's context: the recipe, its run folder, and what several stages share (the loss network, the style)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from compressor.config import Recipe
from compressor.data import load_image, resolve_style
from compressor.losses import style_grams
from compressor.models import VGG19LossNet, load_vgg19

STAGE_DIRS = {
    "model": "teacher",
    "prune": "pruned",
    "search": "search",
    "distill": "distilled",
    "quantize": "quantized",
    "export": "exports",
    "evaluate": "evaluation",
}


@dataclass
class RunContext:
    """What every stage needs: the recipe, the run folder, the reference loss network and the style."""

    recipe: Recipe
    run_dir: Path
    force: bool = False
    progress: bool = True
    resume: bool = False
    stamps: dict[str, dict[str, Any]] = field(default_factory=dict)  # each finished stage's: hash, status, seconds

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
