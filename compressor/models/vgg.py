"""VGG19 loss network: the perceptual judge behind content and Gram style losses.

Built as torchvision's ``vgg19().features`` (same module indices, so ImageNet
weights load by key) truncated after the deepest requested tap, with ReLUs
that are *not* in-place (torch-pruning cannot trace in-place ReLUs) and the
ImageNet normalisation inside, so callers pass RGB in [0, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from compressor.models.spec import VGG19_CFG, VGG19_CONV_NAMES, VGG19Spec

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SEED = 0


def vgg19_layer_names() -> list[str]:
    """Names of torchvision's ``features`` modules in order: conv1_1, relu1_1, ..., pool5."""
    names: list[str] = []
    conv_iter = iter(VGG19_CONV_NAMES)
    pool = 1
    for item in VGG19_CFG:
        if item == "M":
            names.append(f"pool{pool}")
            pool += 1
        else:
            conv = next(conv_iter)
            names += [f"conv{conv}", f"relu{conv}"]
    return names


class VGG19LossNet(nn.Module):
    """Returns a dict of the requested taps (e.g. ``relu3_1``, ``conv4_2``)."""

    def __init__(self, spec: VGG19Spec | None = None):
        super().__init__()
        spec = spec or VGG19Spec()
        names = vgg19_layer_names()
        unknown = [t for t in spec.taps if t not in names]
        if unknown:
            raise ValueError(f"unknown VGG19 tap(s) {unknown}; choose from {names}")
        self.spec = spec
        self.depth = max(names.index(t) for t in spec.taps) + 1
        self.layer_names = names[: self.depth]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        layers: list[nn.Module] = []
        in_ch, widths = 3, iter(spec.widths)
        for name in self.layer_names:
            if name.startswith("conv"):
                out_ch = next(widths)
                layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
                in_ch = out_ch
            elif name.startswith("relu"):
                layers.append(nn.ReLU(inplace=False))
            else:
                layers.append(nn.MaxPool2d(2, 2) if spec.pooling == "max" else nn.AvgPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        # Learned 1x1 maps from pruned tap widths back to the original ones (distillation only).
        self.projections = nn.ModuleDict(
            {tap: nn.Conv2d(self._tap_width(tap), width, 1) for tap, width in spec.projections.items()}
        )
        self.weights_source = "random"

    def _tap_width(self, tap: str) -> int:
        convs = [n for n in self.layer_names[: self.layer_names.index(tap) + 1] if n.startswith("conv")]
        return self.spec.widths[len(convs) - 1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        taps = set(self.spec.taps)
        out: dict[str, torch.Tensor] = {}
        h = (x - self.mean) / self.std
        for name, layer in zip(self.layer_names, self.features):
            h = layer(h)
            if name in taps:
                out[name] = h
        return out

    def current_spec(self) -> VGG19Spec:
        widths = [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)]
        return self.spec.model_copy(update={"widths": widths + self.spec.widths[len(widths) :]})


class VGGWeightsUnavailable(RuntimeError):
    pass


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's VGG19 ImageNet weights: from the torch hub cache, or downloaded when a network exists."""
    from torchvision.models import VGG19_Weights

    try:
        return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # offline, proxy refused, corrupt cache ...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise VGGWeightsUnavailable(
            f"VGG19 ImageNet weights are not in the torch hub cache ({cache}) and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Put vgg19-dcbb9e9d.pth there, pass a local weights file, "
            "or allow the seeded random-init fallback."
        ) from exc


def load_vgg19(
    weights: str = "imagenet",
    spec: VGG19Spec | None = None,
    allow_fallback: bool = False,
) -> VGG19LossNet:
    """Build the loss network and load its weights.

    ``weights`` is ``"imagenet"``, ``"random"`` (seeded) or a local file path
    (torchvision ``vgg19`` state dict or a ``features`` state dict, ``.pth``
    or ``.safetensors``). The chosen source is kept in ``net.weights_source``
    so every report can say which network judged it.
    """
    net = VGG19LossNet(spec)
    if weights == "random":
        _seeded_init(net)
        net.weights_source = f"random(seed={RANDOM_SEED})"
    elif weights == "imagenet":
        try:
            state = _imagenet_state_dict()
        except VGGWeightsUnavailable as exc:
            if not allow_fallback:
                raise
            log.warning(
                "!!! %s\n!!! FALLING BACK to a seeded random-init VGG19 (seed=%d). Losses are judged by an "
                "untrained network; every report will say so.",
                exc,
                RANDOM_SEED,
            )
            return load_vgg19("random", spec)
        _load_features(net, state, "torchvision VGG19_Weights.IMAGENET1K_V1")
        net.weights_source = "imagenet(torchvision VGG19_Weights.IMAGENET1K_V1)"
    else:
        from compressor.models.checkpoint import read_state_dict

        _load_features(net, read_state_dict(Path(weights)), weights)
        net.weights_source = f"file({weights})"
    return net.eval().requires_grad_(False)


def _seeded_init(net: VGG19LossNet) -> None:
    gen = torch.Generator().manual_seed(RANDOM_SEED)
    with torch.no_grad():
        for m in net.features:
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
                m.bias.zero_()


def _load_features(net: VGG19LossNet, state: dict[str, torch.Tensor], source: str) -> None:
    prefix = "features." if any(k.startswith("features.") for k in state) else ""
    wanted = {k: v for k, v in state.items() if k.startswith(prefix)}
    own = net.features.state_dict()
    picked = {k: wanted[prefix + k] for k in own if prefix + k in wanted}
    from compressor.models.checkpoint import check_shapes

    check_shapes(own, picked, source)
    net.features.load_state_dict(picked)
