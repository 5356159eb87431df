"""Johnson et al. 2016 fast style transfer network, built from a width spec.

Layer names follow pytorch/examples fast_neural_style (``conv1.conv2d``,
``in1``, ``res1.conv1.conv2d``, ``deconv3.conv2d``) so its checkpoints load by
key. Input and output are float RGB in [0, 1]; the network itself works in the
0-255 range the reference implementation was trained in, so a pytorch/examples
checkpoint needs no weight surgery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor.config import TrainConfig
from compressor.losses import StyleTransferLoss, finish, loss_weights, teacher_terms, uses_teacher
from compressor.models.checkpoint import CheckpointMismatch, load_weights, read_state_dict
from compressor.models.registry import (
    Family,
    ForeignLoader,
    Objective,
    ResidualWeights,
    Width,
    register_family,
    replace_modules,
)


class STNSpec(BaseModel):
    """Localisation net of the optional spatial transformer in front of TransformerNet."""

    model_config = ConfigDict(extra="forbid")
    conv1: Width = 8
    conv2: Width = 16
    hidden: Width = 32


class TransformerNetSpec(BaseModel):
    """Johnson et al. 2016 TransformerNet widths.

    ``trunk`` is shared by conv3, every residual block's output and deconv1's
    input (the residual coupling); each residual block's inner width is free.
    """

    model_config = ConfigDict(extra="forbid")
    family: Literal["transformer_net"] = "transformer_net"
    style: str | None = Field(None, description="Name of the style image the weights were trained on, if any.")
    conv1: Width = 32
    conv2: Width = 64
    trunk: Width = 128
    res_inner: list[Width] = Field(default_factory=lambda: [128] * 5, min_length=5, max_length=5)
    deconv1: Width = 64
    deconv2: Width = 32
    stn: STNSpec | None = None


class ConvLayer(nn.Module):
    """Reflection padding followed by a convolution (padding kept outside the conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour upsampling then a convolution: avoids transposed-conv checkerboards.

    The upsampling is an ``nn.Upsample`` module (no weights), so export rewrites keyed on module types reach it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, upsample: int | None = None):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=upsample, mode="nearest") if upsample else nn.Identity()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(self.upsample(x)))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, inner: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, inner, 3)
        self.in1 = nn.InstanceNorm2d(inner, affine=True)
        self.conv2 = ConvLayer(inner, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(self.relu(self.in1(self.conv1(x)))))


class SpatialTransformer(nn.Module):
    """Localisation net -> affine grid -> grid_sample, initialised to the identity warp."""

    def __init__(self, spec: STNSpec):
        super().__init__()
        self.localization = nn.Sequential(
            nn.Conv2d(3, spec.conv1, 7, stride=2, padding=3),
            nn.ReLU(),
            nn.Conv2d(spec.conv1, spec.conv2, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(spec.conv2, spec.hidden),
            nn.ReLU(),
            nn.Linear(spec.hidden, 6),
        )
        final = self.localization[-1]
        nn.init.zeros_(final.weight)
        with torch.no_grad():
            final.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.localization(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


class TransformerNet(nn.Module):
    def __init__(self, spec: TransformerNetSpec | None = None):
        super().__init__()
        spec = spec or TransformerNetSpec()
        if len(spec.res_inner) != 5:
            raise ValueError(f"TransformerNet needs 5 residual widths, spec has {len(spec.res_inner)}")
        self.spec = spec
        self.stn = SpatialTransformer(spec.stn) if spec.stn else None
        self.conv1 = ConvLayer(3, spec.conv1, 9)
        self.in1 = nn.InstanceNorm2d(spec.conv1, affine=True)
        self.conv2 = ConvLayer(spec.conv1, spec.conv2, 3, stride=2)
        self.in2 = nn.InstanceNorm2d(spec.conv2, affine=True)
        self.conv3 = ConvLayer(spec.conv2, spec.trunk, 3, stride=2)
        self.in3 = nn.InstanceNorm2d(spec.trunk, affine=True)
        for i, inner in enumerate(spec.res_inner, start=1):
            setattr(self, f"res{i}", ResidualBlock(spec.trunk, inner))
        self.deconv1 = UpsampleConvLayer(spec.trunk, spec.deconv1, 3, upsample=2)
        self.in4 = nn.InstanceNorm2d(spec.deconv1, affine=True)
        self.deconv2 = UpsampleConvLayer(spec.deconv1, spec.deconv2, 3, upsample=2)
        self.in5 = nn.InstanceNorm2d(spec.deconv2, affine=True)
        self.deconv3 = ConvLayer(spec.deconv2, 3, 9)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map RGB [0, 1] to stylised RGB (nominally [0, 1]; clamp when saving)."""
        if self.stn is not None:
            x = self.stn(x)
        y = x * 255.0
        y = self.relu(self.in1(self.conv1(y)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y) / 255.0

    def current_spec(self) -> TransformerNetSpec:
        """The spec of this module as it is now (after pruning, widths are read off the layers)."""
        stn = None
        if self.stn is not None:
            loc = self.stn.localization
            stn = STNSpec(conv1=loc[0].out_channels, conv2=loc[2].out_channels, hidden=loc[6].out_features)
        return TransformerNetSpec(
            style=self.spec.style,
            conv1=self.conv1.conv2d.out_channels,
            conv2=self.conv2.conv2d.out_channels,
            trunk=self.conv3.conv2d.out_channels,
            res_inner=[getattr(self, f"res{i}").conv1.conv2d.out_channels for i in range(1, 6)],
            deconv1=self.deconv1.conv2d.out_channels,
            deconv2=self.deconv2.conv2d.out_channels,
            stn=stn,
        )


# ---------------------------------------------------------------- foreign checkpoints


def load_fast_neural_style(path: str | Path, style: str | None = None) -> TransformerNet:
    """A pytorch/examples fast_neural_style checkpoint as a TransformerNet.

    Legacy ``in*.running_mean/var`` keys (old InstanceNorm) are dropped; the
    0-255 I/O of those models is what TransformerNet computes in internally.
    The widths are read off the tensors, so narrower variants load too.
    """
    path = Path(path)
    state = {k: v for k, v in read_state_dict(path).items() if not k.endswith(("running_mean", "running_var"))}
    try:
        spec = TransformerNetSpec(
            style=style or path.stem,
            conv1=state["conv1.conv2d.weight"].shape[0],
            conv2=state["conv2.conv2d.weight"].shape[0],
            trunk=state["conv3.conv2d.weight"].shape[0],
            res_inner=[state[f"res{i}.conv1.conv2d.weight"].shape[0] for i in range(1, 6)],
            deconv1=state["deconv1.conv2d.weight"].shape[0],
            deconv2=state["deconv2.conv2d.weight"].shape[0],
        )
    except KeyError as exc:
        raise CheckpointMismatch(f"{path}: not a fast_neural_style TransformerNet checkpoint (no {exc})") from exc
    model = TransformerNet(spec)
    load_weights(model, state, str(path))
    return model.eval()


# ---------------------------------------------------------------- distillation


def transformer_objective(
    config: TrainConfig,
    vgg: nn.Module,
    style_grams: dict[str, torch.Tensor] | None,
    teacher: nn.Module | None = None,
) -> Objective:
    """Loss terms for an image-to-image student (TransformerNet) on a batch of content crops."""
    weights = loss_weights(config)
    wanted = style_grams is not None and bool(weights.content or weights.style or weights.tv)  # else no VGG pass
    style_terms = StyleTransferLoss(vgg, style_grams, weights) if wanted else None
    use_teacher = uses_teacher(config, teacher)
    if style_terms is None and not use_teacher:
        raise ValueError("nothing to learn from: give a style image (style losses) or a teacher with nonzero weights")

    def objective(student: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        output = student(batch)
        terms: dict[str, torch.Tensor] = {}
        if style_terms is not None:
            terms.update({k: v for k, v in style_terms(output, batch).items() if k != "total"})
        if use_teacher:
            with torch.no_grad():
                target = teacher(batch)
            terms.update(teacher_terms(config, vgg, output, target))
        return finish(terms)

    return objective


# ---------------------------------------------------------------- export rewrites


def _linspace(steps: int) -> torch.Tensor:
    return torch.linspace(-1, 1, steps) * (steps - 1) / steps  # align_corners=False, as aten computes it


class ExplicitGridSTN(nn.Module):
    """SpatialTransformer with the affine grid computed as aten does (base grid @ theta^T), as a plain tensor.

    coremltools fuses affine_grid + grid_sample into an ``affine`` op that has
    no border padding; given an explicit grid it emits ``resample``, which has.
    """

    def __init__(self, stn: nn.Module):
        super().__init__()
        self.localization = stn.localization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w = (int(d) for d in (x.shape[0], x.shape[2], x.shape[3]))  # fixed-shape export: constants
        theta = self.localization(x).view(-1, 2, 3)
        xs, ys = _linspace(w).expand(h, w), _linspace(h).unsqueeze(-1).expand(h, w)
        base = torch.stack([xs, ys, torch.ones(h, w)], -1).expand(n, h, w, 3)
        grid = base.reshape(n, h * w, 3).bmm(theta.transpose(1, 2)).view(n, h, w, 2)
        return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def explicit_grid(model: nn.Module) -> int:
    """Replace every SpatialTransformer in ``model`` (in place) by ExplicitGridSTN; returns how many."""
    return replace_modules(model, lambda m: ExplicitGridSTN(m) if isinstance(m, SpatialTransformer) else None)


# ---------------------------------------------------------------- the family


class TransformerNetFamily(Family):
    name = "transformer_net"
    style_losses = True
    spec = TransformerNetSpec
    module = TransformerNet
    role = "style_transformer"
    loaders = (
        ForeignLoader("fast_neural_style",
                      accepts=lambda path, companion: companion is None
                      and path.suffix in (".pth", ".pt", ".safetensors"),
                      load=lambda path, companion: load_fast_neural_style(path)),
    )
    rewrites = {"explicit_grid": explicit_grid}
    format_rewrites = {"coreml": ("explicit_grid",)}
    size_multiple = 4  # two stride-2 convs, two x2 upsamplings

    def layer_widths(self, spec: TransformerNetSpec) -> dict[str, int]:
        widths = {"conv1": spec.conv1, "conv2": spec.conv2, "trunk": spec.trunk}
        widths |= {f"res{i}.inner": w for i, w in enumerate(spec.res_inner, start=1)}
        return widths | {"deconv1": spec.deconv1, "deconv2": spec.deconv2}

    def protected_layers(self, model: TransformerNet, config) -> list[nn.Module]:
        """The RGB output conv, and the STN's 6 affine numbers."""
        keep: list[nn.Module] = [model.deconv3.conv2d]
        if model.stn is not None:
            keep.append(model.stn.localization[-1])
        return keep

    def objective(self, student, teacher, config, vgg, style_grams, style_images) -> Objective:
        return transformer_objective(config, vgg, style_grams, teacher)

    def checkpoint_modules(self, model: TransformerNet) -> list[nn.Module]:
        return [m for m in model.modules() if isinstance(m, ResidualBlock)]

    def trunk_ends(self, model: TransformerNet) -> tuple[nn.Module, nn.Module]:
        return model.res1, model.deconv1

    def residual_trunk(self, model: TransformerNet) -> list[ResidualWeights]:
        """Conv biases are left out: the instance norm after each conv cancels them exactly."""
        blocks = [getattr(model, f"res{i}") for i in range(1, 6)]
        return [((b.conv1.conv2d.weight.detach(), b.in1.weight.detach(), b.in1.bias.detach()),
                 (b.conv2.conv2d.weight.detach(), b.in2.weight.detach(), b.in2.bias.detach())) for b in blocks]


register_family(TransformerNetFamily())
