"""Perceptual losses, with one convention throughout.

- Images are RGB in [0, 1]; the VGG19 loss network normalises internally.
- ``gram_matrix(F) = F Fᵀ / (C·H·W)`` for features F of shape (C, H·W).
- Style loss = Σ_layers w_l · mean((G_l(x) − G_l(style))²).
- Content loss = Σ_layers w_l · mean((F_l(x) − F_l(content))²).
- Total variation = mean|∂x| + mean|∂y| (anisotropic L1).
- AdaIN style loss = Σ_layers (‖μ(x)−μ(s)‖² + ‖σ(x)−σ(s)‖²) as means over channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function_unary

from compressor.config import TrainConfig
from compressor.errors import UserError
from compressor.io import atomic_write
from compressor.safeload import read_safetensors

DEFAULT_STYLE_LAYERS = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0, "relu4_1": 1.0, "relu5_1": 1.0}
DEFAULT_CONTENT_LAYERS = {"relu4_2": 1.0}


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C), normalised by C·H·W."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def content_loss(
    features: dict[str, torch.Tensor], target: dict[str, torch.Tensor], weights: dict[str, float]
) -> torch.Tensor:
    return sum(w * torch.mean((features[k] - target[k]) ** 2) for k, w in weights.items())


def style_loss(
    features: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor], weights: dict[str, float]
) -> torch.Tensor:
    """Gram loss; ``target_grams`` of batch 1 broadcast over the batch of ``features``."""
    return sum(w * torch.mean((gram_matrix(features[k]) - target_grams[k]) ** 2) for k, w in weights.items())


def tv_loss(images: torch.Tensor) -> torch.Tensor:
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dx + dy


def mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel spatial mean and std, shaped (N, C, 1, 1).

    Overridable through ``torch.overrides`` so tiled inference can give AdaIN a thumbnail's statistics.
    """
    if has_torch_function_unary(feat):
        return handle_torch_function(mean_std, (feat,), feat, eps=eps)
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1)
    return flat.mean(-1).view(n, c, 1, 1), (flat.var(-1, unbiased=True) + eps).sqrt().view(n, c, 1, 1)


def adain_style_loss(features: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for key, feat in features.items():
        f_mean, f_std = mean_std(feat)
        t_mean, t_std = mean_std(target[key])
        total = total + torch.mean((f_mean - t_mean) ** 2) + torch.mean((f_std - t_std) ** 2)
    return total


@dataclass
class LossWeights:
    """Weights of the style-transfer objective; defaults (TrainConfig's) suit [0, 1] images and Gram/(C·H·W)."""

    content: float = TrainConfig.model_fields["content_weight"].default
    style: float = TrainConfig.model_fields["style_weight"].default
    tv: float = TrainConfig.model_fields["tv_weight"].default
    content_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTENT_LAYERS))
    style_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))


class StyleTransferLoss(torch.nn.Module):
    """Content + Gram style + TV loss against one style, judged by ``vgg``.

    The style's Gram matrices are computed once (or taken from a style
    library) and reused every step.
    """

    def __init__(self, vgg: nn.Module, style_grams: dict[str, torch.Tensor], weights: LossWeights):
        super().__init__()
        missing = [k for k in [*weights.style_layers, *weights.content_layers] if k not in vgg.spec.taps]
        if missing:
            raise ValueError(f"loss layers {missing} are not taps of the loss network {vgg.spec.taps}")
        self.vgg = vgg
        self.weights = weights
        self.style_grams = {k: style_grams[k] for k in weights.style_layers}

    def forward(
        self, output: torch.Tensor, content: torch.Tensor, content_features: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Weighted loss terms and their sum under ``"total"``."""
        feats = self.vgg(output)
        if content_features is None:
            with torch.no_grad():
                content_features = self.vgg(content)
        terms = {
            "content": self.weights.content * content_loss(feats, content_features, self.weights.content_layers),
            "style": self.weights.style * style_loss(feats, self.style_grams, self.weights.style_layers),
            "tv": self.weights.tv * tv_loss(output),
        }
        terms["total"] = sum(terms.values())
        return terms


def psnr(output: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    """PSNR in dB of ``output`` against ``reference`` (torchmetrics); identical inputs give ``inf``. Imported here:
    torchmetrics loads torchvision and transformers (about 290 MB resident), which stylizing never needs."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(output, reference, data_range=data_range))


def loss_weights(config: TrainConfig) -> LossWeights:
    """The style-transfer weights of a training run."""
    return LossWeights(content=config.content_weight, style=config.style_weight, tv=config.tv_weight)


def finish(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Loss terms plus their sum under ``"total"`` (what the training loop minimises)."""
    terms["total"] = sum(terms.values())
    return terms


def uses_teacher(config: TrainConfig, teacher: nn.Module | None) -> bool:
    return teacher is not None and bool(config.output_weight or config.perceptual_weight or config.judge_weight
                                        or config.judge_style_weight)


# Distillation terms on the student's and the teacher's pictures that their owner registers, as one function
# (output, target, names) -> {name: term} with each name's config weight field, so terms that share work (the
# judge's two distances, one pass of the judge) compute it once per step and hold nothing between steps.
PictureTerms = Callable[[torch.Tensor, torch.Tensor, set[str]], dict[str, torch.Tensor]]
PICTURE_TERMS: dict[str, tuple[dict[str, str], PictureTerms]] = {}  # owner -> ({term: weight field}, terms)


def register_picture_terms(owner: str, weight_fields: dict[str, str], terms: PictureTerms) -> None:
    PICTURE_TERMS[owner] = (weight_fields, terms)


def teacher_terms(
    config: TrainConfig, vgg: nn.Module, output: torch.Tensor, target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Distillation terms: output L1, VGG perceptual MSE, and the registered picture terms (the judge's two
    distances, ``compressor.judge``) of the student's picture from the teacher's."""
    terms: dict[str, torch.Tensor] = {}
    if config.output_weight:
        terms["output"] = config.output_weight * (output - target).abs().mean()
    if config.perceptual_weight:
        with torch.no_grad():
            target_feats = vgg(target)
        feats = vgg(output)
        terms["perceptual"] = config.perceptual_weight * content_loss(feats, target_feats, {k: 1.0 for k in feats})
    for weight_fields, compute in PICTURE_TERMS.values():
        weights = {name: getattr(config, field) for name, field in weight_fields.items() if getattr(config, field, 0.0)}
        if weights:
            terms.update({name: weights[name] * term for name, term in compute(output, target, set(weights)).items()})
    registered = {field for weight_fields, _ in PICTURE_TERMS.values() for field in weight_fields.values()}
    for weight_name in ("judge_weight", "judge_style_weight"):  # never silently without a term it asks for
        if getattr(config, weight_name, 0.0) and weight_name not in registered:
            raise RuntimeError(f"{weight_name}: no distillation term registered for it (import compressor.judge)")
    return terms


@torch.no_grad()
def style_grams(vgg: nn.Module, style_image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gram matrices of a (1, 3, H, W) style image at every tap of ``vgg``."""
    return {k: gram_matrix(v) for k, v in vgg(style_image).items()}


def save_style_library(path: Path, grams: dict[str, dict[str, torch.Tensor]], loss_network: str) -> None:
    """Store precomputed Grams of several styles: one safetensors file, keys ``style/layer``."""
    flat = {f"{style}/{layer}": g.contiguous() for style, layers in grams.items() for layer, g in layers.items()}
    atomic_write(path, lambda p: save_file(flat, str(p), metadata={"loss_network": loss_network}))


def load_style_library(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], str]:
    """Styles -> layer -> Gram, and the loss network the Grams were computed with."""
    from safetensors import safe_open

    tensors = read_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        loss_network = (f.metadata() or {}).get("loss_network", "unknown")
    library: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if "/" not in key:
            raise UserError(path, f"tensor {key!r} is not STYLE/LAYER", "create it with 'styleslim style-library'")
        style, layer = key.rsplit("/", 1)
        library.setdefault(style, {})[layer] = tensor
    return library, loss_network
