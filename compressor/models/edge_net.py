"""A student built for int8 runtimes: image -> image with nothing between the convs that scales with activations.

Why: once the convs are int8, a Johnson/Dumoulin network spends its time on reflection padding,
float instance norms with their quantize/dequantize pairs, upsampling copies and thin full-resolution 9x9
convs. This family has none of those by default:

- space-to-depth by ``unshuffle`` in place of thin full-resolution convs: the stem is one conv with a
  3*unshuffle kernel and stride ``unshuffle`` (= pixel-unshuffle + 3x3 conv, without the Reshape/Transpose
  pair that costs ONNX Runtime dearly: benchmarks/bench_edge.py profiles it), and pixel-shuffle (DepthToSpace) at the output; every
  other conv runs at 1/unshuffle resolution;
- zero padding, which folds into the conv;
- no norm (``norm="none"``: the conv bias is the learned affine; nothing is left to fold at inference), or
  instance norm where fidelity needs it (``norm="instance"``);
- ``down`` stride-2 convs and as many pixel-shuffle ups for a wider receptive field at the same MACs;
- plain 3x3 residual blocks (``block="conv"``), depthwise-separable ones (``block="dw"``), or the
  Johnson/Dumoulin block (``block="norm"``: conv, instance norm, ReLU, conv, instance norm), whose weights
  can start as the teacher's own residual trunk (``graft``: a recipe's ``init: teacher_trunk``);
- widths meant to be multiples of 8/16 (SIMD tiles).

I/O is styleslim's: RGB [0, 1] NCHW in, RGB in (0, 1) out (a sigmoid), sides a multiple of
``unshuffle * 2**down``. It learns from any teacher's outputs (output MSE + L1, optional perceptual).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor.losses import finish, teacher_terms
from compressor.models.registry import Family, Objective, ResidualWeights, Width, get_family, register_family


class EdgeNetSpec(BaseModel):
    """The knobs of the int8-friendly student (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    family: Literal["edge_net"] = "edge_net"
    style: str | None = None
    unshuffle: Literal[1, 2, 4] = 4
    stem: Width = 32
    down: int = Field(0, ge=0, le=2)
    trunk: Width = 32
    blocks: int = Field(3, ge=0, le=16)
    block: Literal["conv", "dw", "norm"] = "conv"
    expand: int = Field(2, ge=1, le=8, description="Depthwise blocks: inner width = expand * trunk.")
    norm: Literal["none", "instance"] = "none"
    head: int = Field(0, ge=0, le=1024, description="Width of a 3x3 conv + ReLU before the RGB conv (0: none); "
                      "the teacher's decoder is nonlinear, a one-conv head is not.")


def _act(cin: int, cout: int, norm: str, stride: int = 1, kernel: int = 3, pad: int | None = None) -> nn.Sequential:
    """conv (zero padding) [+ instance norm] + ReLU."""
    pad = kernel // 2 if pad is None else pad
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, pad, bias=norm == "none")]
    if norm == "instance":
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    return nn.Sequential(*layers, nn.ReLU())


class ResBlock(nn.Module):
    """x + f(x): two 3x3 convs, (``dw``) 1x1 expand, depthwise 3x3, 1x1 project (MobileNetV2-like), or
    (``norm``) conv, instance norm, ReLU, conv, instance norm (Johnson et al.; zero padding here)."""

    def __init__(self, width: int, spec: EdgeNetSpec):
        super().__init__()
        if spec.block == "conv":
            self.body = nn.Sequential(_act(width, width, spec.norm), nn.Conv2d(width, width, 3, 1, 1))
        elif spec.block == "norm":
            self.body = nn.Sequential(_act(width, width, "instance"), nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                      nn.InstanceNorm2d(width, affine=True))
        else:
            inner = width * spec.expand
            self.body = nn.Sequential(
                _act(width, inner, spec.norm, kernel=1),
                nn.Conv2d(inner, inner, 3, 1, 1, groups=inner), nn.ReLU(),
                nn.Conv2d(inner, width, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EdgeNet(nn.Module):
    def __init__(self, spec: EdgeNetSpec | None = None):
        super().__init__()
        spec = spec or EdgeNetSpec()
        self.spec = spec
        f = spec.unshuffle
        self.stem = _act(3, spec.stem, spec.norm, stride=f, kernel=3 * f, pad=f)
        widths = [spec.stem] + [spec.trunk] * spec.down
        self.down = nn.ModuleList(_act(widths[i], widths[i + 1], spec.norm, stride=2) for i in range(spec.down))
        trunk = widths[-1]
        self.blocks = nn.Sequential(*(ResBlock(trunk, spec) for _ in range(spec.blocks)))
        # Each up: a conv to 4x the width below, then pixel-shuffle x2 (no upsampling copies).
        self.up = nn.ModuleList(nn.Sequential(nn.Conv2d(widths[i + 1], 4 * widths[i], 3, 1, 1), nn.PixelShuffle(2),
                                              nn.ReLU()) for i in reversed(range(spec.down)))
        rgb = nn.Conv2d(spec.head or spec.stem, 3 * f * f, 3, 1, 1)
        self.head = nn.Sequential(_act(spec.stem, spec.head, "none"), rgb) if spec.head else rgb
        self.shuffle = nn.PixelShuffle(f) if f > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.down:
            x = layer(x)
        x = self.blocks(x)
        for layer in self.up:
            x = layer(x)
        return torch.sigmoid(self.shuffle(self.head(x)))

    def current_spec(self) -> EdgeNetSpec:
        """Widths read off the layers (a pruned student describes itself)."""
        spec = self.spec
        stem = self.stem[0].out_channels
        trunk = self.down[-1][0].out_channels if self.down else spec.trunk
        head = self.head[0][0].out_channels if spec.head else 0
        return spec.model_copy(update={"stem": stem, "trunk": trunk, "head": head})


def graft(model: EdgeNet, trunk: list[ResidualWeights]) -> int:
    """Start ``model``'s ``norm`` residual blocks as the teacher's first ones; returns how many were grafted.

    Why: a teacher's residual trunk at 1/4 resolution is already cheap; what makes it slow are the ends
    around it. Keeping its trunk and learning new int8-friendly ends keeps far more of its behaviour than a
    student learnt from scratch. ``trunk``: the teacher family's ``residual_trunk``."""
    if model.spec.block != "norm":
        raise ValueError(f"grafting a teacher's residual blocks needs block: norm (this spec has {model.spec.block})")
    if len(trunk) < len(model.blocks):
        raise ValueError(f"the teacher has {len(trunk)} residual blocks, the student {len(model.blocks)}")
    for block, weights in zip(model.blocks, trunk):
        layers = ((block.body[0][0], block.body[0][1]), (block.body[1], block.body[2]))
        for (conv, norm), (weight, gamma, beta) in zip(layers, weights):
            if weight.shape != conv.weight.shape:
                raise ValueError(f"the teacher's residual convs are {tuple(weight.shape)}, the student's "
                                 f"{tuple(conv.weight.shape)} (give the student a trunk {weight.shape[1]} wide: "
                                 "trunk, or stem when down is 0)")
            with torch.no_grad():
                conv.weight.copy_(weight)
                norm.weight.copy_(gamma)
                norm.bias.copy_(beta)
    return len(model.blocks)


def edge_objective(config: Any, vgg: nn.Module, teacher: nn.Module | None, student: EdgeNet) -> Objective:
    """Output MSE (what PSNR measures) + L1 to any teacher's output, plus VGG perceptual when weighted, plus the
    residual trunk's input and output (``trunk_weight``) for a teacher whose trunk the student's matches.

    Batches of 6-channel (input, target) pairs carry the teacher's outputs already (``TeacherPairs``)."""
    if teacher is None or not config.output_weight:
        raise ValueError("an edge_net student learns from a teacher: give a teacher and a nonzero output_weight")
    trunk_weight = getattr(config, "trunk_weight", 0.0)
    teacher_ends = student_ends = ()  # whose inputs are compared (none without trunk_weight)
    if trunk_weight:
        if not hasattr(teacher, "spec"):
            raise ValueError("trunk_weight compares inner features: it needs the model stage's teacher, not an ONNX one")
        teacher_ends = get_family(teacher).trunk_ends(teacher)
        student_ends = get_family(student).trunk_ends(student)

    def objective(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted: list[torch.Tensor] = []
        if batch.shape[1] == 6:  # (input, teacher output) pairs: compressor.blackbox.TeacherPairs
            batch, target = batch[:, :3], batch[:, 3:]
        else:
            with torch.no_grad(), module_inputs(teacher_ends) as wanted:
                target = teacher(batch)
        with module_inputs(student_ends) as got:
            output = model(batch)
        terms = teacher_terms(config, vgg, output, target)
        terms["mse"] = config.output_weight * 10.0 * (output - target).pow(2).mean()
        if trunk_weight:
            if [g.shape for g in got] != [w.shape for w in wanted]:
                raise ValueError(f"trunk_weight: the student's trunk is {tuple(got[0].shape[1:])}, the teacher's "
                                 f"{tuple(wanted[0].shape[1:])} (give the student the teacher's trunk width)")
            terms["trunk"] = trunk_weight * sum((g - w).pow(2).mean() / w.pow(2).mean().clamp_min(1e-12)
                                                for g, w in zip(got, wanted))
        return finish(terms)

    return objective


@contextmanager
def module_inputs(modules: tuple[nn.Module, ...]) -> Iterator[list[torch.Tensor]]:
    """Collects the first input of each of ``modules`` during the forward passes inside the block, in order."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(args[0])) for m in modules]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


class EdgeNetFamily(Family):
    """One input (RGB [0, 1]), one output; built to be distilled from any teacher and run in int8."""

    name = "edge_net"
    spec = EdgeNetSpec
    module = EdgeNet
    role = "style_transformer"
    size_multiple = 16  # unshuffle * 2**down is at most 4 * 4

    def protected_layers(self, model: EdgeNet, config: Any) -> list[nn.Module]:
        return [model.head[-1] if model.spec.head else model.head]  # its 3*f^2 outputs: RGB pixels after the shuffle

    def objective(self, student, teacher, config, vgg, style_grams, style_images) -> Objective:
        return edge_objective(config, vgg, teacher, student)

    def trunk_ends(self, model: EdgeNet) -> tuple[nn.Module, nn.Module]:
        return model.blocks, model.up[0] if len(model.up) else model.head

    def graft(self, student: EdgeNet, trunk: list[ResidualWeights]) -> int:
        return graft(student, trunk)


register_family(EdgeNetFamily())
