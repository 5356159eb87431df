"""VGG19 loss network: the perceptual judge behind content and Gram style losses.

Built as torchvision's ``vgg19().features`` (same module indices, so ImageNet
weights load by key) truncated after the deepest requested tap, with ReLUs
that are *not* in-place (torch-pruning cannot trace in-place ReLUs) and the
ImageNet normalisation inside, so callers pass RGB in [0, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor.config import TrainConfig
from compressor.losses import finish
from compressor.models.checkpoint import check_shapes, read_state_dict
from compressor.models.registry import Family, Objective, Width, register_family

log = logging.getLogger(__name__)

# torchvision's VGG19 configuration "E": conv widths, "M" marks a pooling layer.
VGG19_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
]
VGG19_CONV_NAMES: list[str] = [
    f"{block}_{i}" for block, n in (("1", 2), ("2", 2), ("3", 4), ("4", 4), ("5", 4)) for i in range(1, n + 1)
]


class VGG19Spec(BaseModel):
    """VGG19 ``features`` prefix up to the deepest tap, with ImageNet normalisation inside."""

    model_config = ConfigDict(extra="forbid")
    family: Literal["vgg19"] = "vgg19"
    style: str | None = Field(None, description="Name of the style image the weights were trained on, if any.")
    widths: list[Width] = Field(default_factory=lambda: [w for w in VGG19_CFG if w != "M"], min_length=16,
                                max_length=16)
    taps: list[str] = Field(default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"])
    pooling: Literal["max", "avg"] = "max"
    projections: dict[str, Width] = Field(
        default_factory=dict,
        description="Tap name -> original width, for pruned taps distilled through learned 1x1 projections.",
    )

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
    check_shapes(own, picked, source)
    net.features.load_state_dict(picked)


# ---------------------------------------------------------------- pruning


def tap_convs(vgg: VGG19LossNet) -> dict[str, nn.Conv2d]:
    """Tap name -> the conv whose output (after ReLU/pool) the tap reads."""
    out: dict[str, nn.Conv2d] = {}
    for tap in vgg.spec.taps:
        index = vgg.layer_names.index(tap)
        out[tap] = next(m for m in reversed(vgg.features[: index + 1]) if isinstance(m, nn.Conv2d))
    return out


def add_tap_projections(
    vgg: VGG19LossNet, taps: dict[str, nn.Conv2d], original: dict[str, int], kept: dict[str, list[int]]
) -> None:
    """1x1 projections from each narrowed tap back to its original width, starting as a channel re-embedding.

    Kept channel j goes back to its original index; pruned channels start at zero.
    """
    names = {m: n for n, m in vgg.named_modules()}
    projections = {}
    for tap, conv in taps.items():
        if conv.out_channels == original[tap]:
            continue
        proj = nn.Conv2d(conv.out_channels, original[tap], 1)
        with torch.no_grad():
            proj.weight.zero_()
            proj.bias.zero_()
            for j, k in enumerate(kept[names[conv]]):
                proj.weight[k, j] = 1.0
        projections[tap] = proj
    vgg.projections = nn.ModuleDict(projections)
    vgg.spec = vgg.spec.model_copy(update={"projections": {tap: original[tap] for tap in projections}})


# ---------------------------------------------------------------- distillation


def vgg_objective(config: TrainConfig, student: VGG19LossNet, teacher: VGG19LossNet) -> Objective:
    """Feature distillation of a (pruned) VGG19: its taps, through ``projections`` where the spec has them,
    match the teacher's taps. Each tap's MSE is divided by the teacher tap's mean square so deep and
    shallow taps count alike."""
    missing = [t for t in student.spec.taps if t not in teacher.spec.taps]
    if missing:
        raise ValueError(f"student taps {missing} are not taps of the teacher VGG19 {teacher.spec.taps}")
    if not config.feature_weight:
        raise ValueError("feature_weight is 0: a VGG19 student learns only from its teacher's taps")

    def objective(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = model(batch)
        projections = getattr(model, "module", model).projections  # unwrap DistributedDataParallel
        with torch.no_grad():
            target = teacher(batch)
        loss = torch.zeros((), device=batch.device)
        for tap, feat in feats.items():
            pred = projections[tap](feat) if tap in projections else feat
            if pred.shape != target[tap].shape:
                raise ValueError(
                    f"tap {tap}: student gives {tuple(pred.shape[1:])}, teacher {tuple(target[tap].shape[1:])}; "
                    "a pruned tap needs spec.projections"
                )
            loss = loss + F.mse_loss(pred.float(), target[tap].float()) / target[tap].float().pow(2).mean().clamp_min(
                1e-8
            )
        return finish({"features": config.feature_weight * loss})

    return objective


# ---------------------------------------------------------------- the family


class VGG19Family(Family):
    """The loss network: judged by how it ranks losses, pruned with its taps kept (or projected back)."""

    name = "vgg19"
    spec = VGG19Spec
    module = VGG19LossNet
    role = "loss_network"

    def teacher(self, spec, loss_network, weights, allow_fallback):
        """A VGG19 teacher is the reference loss network itself (its weights, this spec's taps)."""
        net = load_vgg19(weights, spec, allow_fallback=allow_fallback)
        return net, net.weights_source

    def io_names(self, model: VGG19LossNet) -> tuple[list[str], list[str]]:
        """Outputs are named by tap, in network order."""
        return ["image"], [n for n in model.layer_names if n in set(model.spec.taps)]

    def layer_widths(self, spec: VGG19Spec) -> dict[str, int]:
        return {f"conv{name}": w for name, w in zip(VGG19_CONV_NAMES, spec.widths)}

    def protected_layers(self, model: VGG19LossNet, config) -> list[nn.Module]:
        return list(tap_convs(model).values()) if config.vgg_mode == "keep_taps" else []

    def layer_aliases(self, model: VGG19LossNet) -> dict[str, nn.Module]:
        """VGG convs also answer to their names (``conv3_1``)."""
        return {n: m for n, m in zip(model.layer_names, model.features) if isinstance(m, nn.Conv2d)}

    def before_prune(self, model: VGG19LossNet, config, finetune: bool) -> dict[str, int]:
        if model.projections:
            raise ValueError("this VGG19 already has tap projections; prune the unprojected network instead")
        if finetune and config.vgg_mode == "project_taps":
            raise ValueError("prune.finetune_steps_between: needs vgg_mode keep_taps "
                             "(projections exist only at the end)")
        return {tap: conv.out_channels for tap, conv in tap_convs(model).items()}

    def after_prune(self, model: VGG19LossNet, config, state: dict[str, int], kept: dict[str, list[int]]) -> None:
        if config.vgg_mode == "project_taps":
            add_tap_projections(model, tap_convs(model), state, kept)

    def objective(self, student, teacher, config, vgg, style_grams, style_images) -> Objective:
        if teacher is None:
            raise ValueError("a VGG19 student needs a teacher: it learns the teacher's taps")
        return vgg_objective(config, student, teacher)


register_family(VGG19Family())
