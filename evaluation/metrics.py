"""Quality (judged by the reference VGG19) and cost (params, MACs) of one variant.

Style and content losses use compressor.losses with its default layers, so a
number here means the same as during training. PSNR/SSIM come from
torchmetrics and compare a variant's output with the teacher's.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from compressor.losses import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, content_loss, psnr, style_loss
from compressor.models import get_family


@torch.no_grad()
def perceptual_losses(
    vgg: nn.Module, output: torch.Tensor, content: torch.Tensor, grams: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Style loss vs the style's Grams and content loss vs the content image, both judged by ``vgg``."""
    feats = vgg(output)
    target = vgg(content)
    return {
        "style_loss": float(style_loss(feats, grams, DEFAULT_STYLE_LAYERS)),
        "content_loss": float(content_loss(feats, target, DEFAULT_CONTENT_LAYERS)),
    }


@torch.no_grad()
def fidelity(output: torch.Tensor, reference: torch.Tensor) -> dict[str, float | None]:
    """PSNR (dB) and SSIM of ``output`` against the teacher's ``reference`` (both clamped to [0, 1]).

    Identical images have infinite PSNR; JSON cannot hold that, so it is None.
    """
    value = psnr(output, reference)
    ssim = float(structural_similarity_index_measure(output, reference, data_range=1.0))
    return {"psnr_vs_teacher": value if math.isfinite(value) else None, "ssim_vs_teacher": ssim}


def degradation_pct(value: float, reference: float, scale: float | None = None) -> float:
    """How much worse a loss is than the teacher's, in % of ``scale`` (default: the teacher's loss); 0 for the
    teacher itself."""
    scale = reference if scale is None else scale
    if scale == 0:
        return 0.0 if value == reference else math.inf
    return 100.0 * (value - reference) / scale


def params_and_macs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """Parameter count and multiply-accumulates of one forward pass (torch-pruning's counter)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(params), int(macs)


def layer_widths(spec) -> dict[str, int]:
    """Per-layer output channels of a spec, in network order (for the width plot of pruned variants)."""
    return get_family(spec).layer_widths(spec)
