"""How well a pruned VGG19 preserves the *loss* it is used for.

A loss network only has to rank images the way the original does: if it
orders pairs of images by style (Gram) and content distance like the
original, training or Gatys optimisation against it goes the same way.
``loss_rank_correlation`` measures exactly that; ``gatys_check`` runs a
short Gatys transfer with the pruned network and judges the result with the
original one.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from compressor.data import load_image, sample_content_paths, sample_style_path
from compressor.gatys import GatysConfig, stylize_gatys
from compressor.images import crop_resize
from compressor.losses import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    LossWeights,
    StyleTransferLoss,
    gram_matrix,
    style_grams,
)
from compressor.models import VGG19LossNet


def loss_views(size: int = 128, seed: int = 0) -> torch.Tensor:
    """(N, 3, size, size) views of held-out images: eval photos and bundled styles, cropped and augmented.

    Each base image gives a centre view, a zoomed random crop, a flipped
    crop, a blurred view and a noisy view, so pairs range from near
    duplicates to unrelated images.
    """
    gen = torch.Generator().manual_seed(seed)
    bases = [*sample_content_paths("eval"), sample_style_path("starry_night"), sample_style_path("composition_vii")]
    views = []
    for path in bases:
        img = load_image(path, size=2 * size).unsqueeze(0)
        h, w = img.shape[-2:]
        side = min(h, w)
        views.append(crop_resize(img, (h - side) // 2, (w - side) // 2, side, size))
        for flip in (False, True):
            crop_side = int(side * (0.4 + 0.4 * torch.rand(1, generator=gen).item()))
            top = int(torch.randint(0, h - crop_side + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - crop_side + 1, (1,), generator=gen))
            crop = crop_resize(img, top, left, crop_side, size)
            views.append(crop.flip(-1) if flip else crop)
        views.append(F.avg_pool2d(views[-3], 5, stride=1, padding=2, count_include_pad=False))
        views.append((views[-4] + 0.08 * torch.randn(views[-4].shape, generator=gen)).clamp(0, 1))
    return torch.cat(views)


@torch.no_grad()
def _pair_losses(
    net: VGG19LossNet, images: torch.Tensor, pairs: list[tuple[int, int]], style_layers: list[str],
    content_layers: list[str],
) -> dict[str, torch.Tensor]:
    """Style and content loss of every pair (the losses of compressor.losses, as squared distances in float64)."""
    feats = net(images)
    i, j = (torch.tensor(p) for p in zip(*pairs))

    def pair_mse(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).double()
        return (torch.cdist(flat, flat) ** 2 / flat.shape[1])[i, j]

    per_layer = {k: pair_mse(gram_matrix(feats[k])) for k in style_layers}
    content = sum(pair_mse(feats[k]) for k in content_layers)
    return {"style": sum(per_layer.values()), "content": content, **{f"style/{k}": v for k, v in per_layer.items()}}


def _loss_layers(a: VGG19LossNet, b: VGG19LossNet) -> tuple[list[str], list[str]]:
    """Default style layers both networks tap; content relu4_2, else the deepest common style layer."""
    style = [k for k in DEFAULT_STYLE_LAYERS if k in a.spec.taps and k in b.spec.taps]
    if not style:
        raise ValueError(f"the networks share none of the style layers {list(DEFAULT_STYLE_LAYERS)} "
                         f"(taps {a.spec.taps} vs {b.spec.taps})")
    content = [k for k in DEFAULT_CONTENT_LAYERS if k in a.spec.taps and k in b.spec.taps]
    return style, content or [style[-1]]


def loss_rank_correlation(
    pruned: VGG19LossNet, reference: VGG19LossNet, size: int = 128, seed: int = 0
) -> dict[str, Any]:
    """Spearman rank correlation of style and content losses over image pairs, pruned vs reference network.

    1.0 means the pruned network orders every pair exactly as the reference
    does. Layers: see ``_loss_layers``.
    """
    images = loss_views(size, seed)
    pairs = list(itertools.combinations(range(len(images)), 2))
    style_layers, content_layers = _loss_layers(pruned, reference)
    ours = _pair_losses(pruned, images, pairs, style_layers, content_layers)
    ref = _pair_losses(reference, images, pairs, style_layers, content_layers)
    rho = {key: float(spearmanr(ours[key].numpy(), ref[key].numpy()).statistic) for key in ref}
    return {
        "style_spearman": rho.pop("style"),
        "content_spearman": rho.pop("content"),
        "style_spearman_per_layer": {k.split("/", 1)[1]: v for k, v in rho.items()},
        "pairs": len(pairs),
        "images": len(images),
        "size": size,
        "style_layers": style_layers,
        "content_layers": content_layers,
        "reference": reference.weights_source,
        "pruned_widths": pruned.current_spec().widths[: sum(isinstance(m, torch.nn.Conv2d) for m in pruned.features)],
    }


def gatys_check(
    pruned: VGG19LossNet,
    reference: VGG19LossNet,
    content: torch.Tensor,
    style: torch.Tensor,
    steps: int = 50,
    weights: LossWeights | None = None,
) -> dict[str, Any]:
    """Run a short Gatys transfer with each network; judge both results with the reference network.

    ``content`` and ``style`` are (1, 3, H, W) in [0, 1]; only the loss
    layers both networks tap are used (``weights`` gives their weights).
    The pruned run's reference losses over the reference run's show what
    pruning cost.
    """
    weights = weights or LossWeights()
    style_layers, content_layers = _loss_layers(pruned, reference)
    weights = LossWeights(
        content=weights.content, style=weights.style, tv=weights.tv,
        content_layers={k: weights.content_layers.get(k, 1.0) for k in content_layers},
        style_layers={k: weights.style_layers.get(k, 1.0) for k in style_layers},
    )
    config = GatysConfig(steps=steps, weights=weights)
    judge = StyleTransferLoss(reference, style_grams(reference, style), weights)
    out: dict[str, Any] = {"steps": steps, "reference": reference.weights_source}
    for name, net in (("pruned", pruned), ("reference_run", reference)):
        image, _ = stylize_gatys(content, style_grams(net, style), net, config, progress=False)
        with torch.no_grad():
            out[name] = {k: float(v) for k, v in judge(image, content).items()}
    out["style_ratio"] = out["pruned"]["style"] / max(out["reference_run"]["style"], 1e-12)
    out["content_ratio"] = out["pruned"]["content"] / max(out["reference_run"]["content"], 1e-12)
    return out
