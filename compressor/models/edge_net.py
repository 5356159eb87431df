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
- ``front``: more 3x3 convs at the stem's resolution (with the norm, + ReLU, each added to its input): the
  teacher reaches its first stride-2 output through two layers (a full-resolution 9x9 conv, then the stride-2
  conv), the stem is one; a grafted trunk needs that input (benchmarks/README.md: one brought the trunk's input
  29 % nearer, where one at the trunk's resolution gave 4 %);
- plain 3x3 residual blocks (``block="conv"``), depthwise-separable ones (``block="dw"``), or the
  Johnson/Dumoulin block (``block="norm"``: conv, instance norm, ReLU, conv, instance norm), whose weights
  can start as the teacher's own residual trunk (``graft``: a recipe's ``init: teacher_trunk``);
- widths meant to be multiples of 8/16 (SIMD tiles);
- ``n_styles`` > 1: every instance norm a conditional one (per-style gamma/beta mixed by a style-weights input,
  like ``multistyle26.onnx``), distilled from a multi-style teacher under styles and blends drawn per batch;
  ``out_norm`` ends it as the teacher ends, an instance norm on the RGB output, so each style sets its own
  output colours (a per-style scale and shift the shared head cannot give), and ``up_norm`` gives each
  pixel-shuffle up a norm as the teacher's upsampling layers have;
- ``tail``: a few channels at full resolution, normed and ended by one wide conv to RGB, as Dumoulin's network
  ends (its 9x9 conv, grafted from it): the fine texture statistics a one-conv head misses. It runs before the
  pixel shuffle, as the conv that computes the same at 1/``unshuffle`` resolution (``unshuffled_kernel``): at
  full resolution those 4 channels took the 26-style student's LiteRT int8 file from 12.7 to 25.0 ms at 512 px
  (benchmarks/README.md);

I/O is styleslim's: RGB [0, 1] NCHW in (and ``style_weights`` [n_styles] for several styles), RGB in (0, 1)
out (a sigmoid), sides a multiple of ``unshuffle * 2**down``. It learns from any teacher's outputs (output MSE +
L1, optional perceptual).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from compressor.losses import finish, teacher_terms
from compressor.models.conditional_norm import (
    ConditionalInstanceNorm,
    StyleWeightsInput,
    batched_style,
    parse_style_weights,
    sample_style_weights,
)
from compressor.models.registry import Objective, OutputLayers, ResidualWeights, Width, get_family, register_family


class EdgeNetSpec(BaseModel):
    """The knobs of the int8-friendly student (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    family: Literal["edge_net"] = "edge_net"
    style: str | None = None
    unshuffle: Literal[1, 2, 4] = 4
    stem: Width = 32
    down: int = Field(0, ge=0, le=2)
    trunk: Width = 32
    front: int = Field(0, ge=0, le=4, description="3x3 convs (+ norm, ReLU; residual) after the stem, at its "
                       "resolution.")
    blocks: int = Field(3, ge=0, le=16)
    block: Literal["conv", "dw", "norm"] = "conv"
    expand: int = Field(2, ge=1, le=8, description="Depthwise blocks: inner width = expand * trunk.")
    inner: list[Width] | None = Field(None, description="Each residual block's inner width (None: the trunk's, "
                                      "expand times it for depthwise blocks); pruning narrows them one by one.")
    norm: Literal["none", "instance"] = "none"
    head: int = Field(0, ge=0, le=1024, description="Width of a 3x3 conv + ReLU before the RGB conv (0: none); "
                      "the teacher's decoder is nonlinear, a one-conv head is not.")
    n_styles: int = Field(1, ge=1, le=1024, description="Styles held: more than 1 makes every instance norm "
                          "conditional, chosen by a style-weights input (needs instance norms).")
    out_norm: bool = Field(False, description="An instance norm on the RGB output before the sigmoid, like the "
                           "teacher's last layer: with several styles, each style's own output colours.")
    up_norm: bool = Field(False, description="An instance norm in each pixel-shuffle up, as the teacher's upsampling "
                          "layers have: with several styles, each style's own scale and shift there too.")
    tail: int = Field(0, ge=0, le=64, description="Channels at full resolution before the RGB output (0: none): the "
                      "head makes them, an instance norm and ReLU follow, then a tail_kernel conv to RGB.")
    tail_kernel: Literal[3, 5, 7, 9] = Field(9, description="The tail's RGB conv kernel at full resolution (9: the "
                                             "teacher's, to graft).")

    @model_validator(mode="after")
    def _styles_need_norms(self) -> EdgeNetSpec:
        if self.n_styles > 1 and self.norm == "none" and self.block != "norm" and not (self.out_norm or self.up_norm):
            raise ValueError("n_styles > 1 needs instance norms to carry the styles (norm: instance, block: norm, "
                             "out_norm: true or up_norm: true)")
        if self.inner is not None and len(self.inner) != self.blocks:
            raise ValueError(f"inner: {len(self.inner)} widths for {self.blocks} blocks (give one per block)")
        return self

    def block_inner(self, trunk: int) -> list[int]:
        """Each residual block's inner width around a trunk ``trunk`` wide."""
        return self.inner or self.default_inner(trunk)

    def default_inner(self, trunk: int) -> list[int]:
        return [trunk * (self.expand if self.block == "dw" else 1)] * self.blocks


class Chain(nn.Sequential):
    """``nn.Sequential`` that also hands the style weights to the layers that take them (conditional norms)."""

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, style) if isinstance(layer, (ConditionalInstanceNorm, Chain, Residual)) else layer(x)
        return x


def _instance_norm(width: int, n_styles: int) -> nn.Module:
    return nn.InstanceNorm2d(width, affine=True) if n_styles == 1 else ConditionalInstanceNorm(width, n_styles)


def _act(cin: int, cout: int, norm: str, stride: int = 1, kernel: int = 3, pad: int | None = None,
         n_styles: int = 1) -> Chain:
    """conv (zero padding) [+ instance norm, conditional for several styles] + ReLU."""
    pad = kernel // 2 if pad is None else pad
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, pad, bias=norm == "none")]
    if norm == "instance":
        layers.append(_instance_norm(cout, n_styles))
    return Chain(*layers, nn.ReLU())


class Residual(nn.Module):
    """x + body(x)."""

    def __init__(self, body: Chain):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.body(x, style)


class ResBlock(Residual):
    """x + f(x): two 3x3 convs, (``dw``) 1x1 expand, depthwise 3x3, 1x1 project (MobileNetV2-like), or
    (``norm``) conv, instance norm, ReLU, conv, instance norm (Johnson et al.; zero padding here)."""

    def __init__(self, width: int, inner: int, spec: EdgeNetSpec):
        n = spec.n_styles
        if spec.block == "conv":
            body = Chain(_act(width, inner, spec.norm, n_styles=n), nn.Conv2d(inner, width, 3, 1, 1))
        elif spec.block == "norm":
            body = Chain(_act(width, inner, "instance", n_styles=n), nn.Conv2d(inner, width, 3, 1, 1, bias=False),
                         _instance_norm(width, n))
        else:
            body = Chain(
                _act(width, inner, spec.norm, kernel=1, n_styles=n),
                nn.Conv2d(inner, inner, 3, 1, 1, groups=inner), nn.ReLU(),
                nn.Conv2d(inner, width, 1),
            )
        super().__init__(body)


class EdgeNet(nn.Module):
    def __init__(self, spec: EdgeNetSpec | None = None):
        super().__init__()
        spec = spec or EdgeNetSpec()
        self.spec = spec
        f = spec.unshuffle
        self.stem = _act(3, spec.stem, spec.norm, stride=f, kernel=3 * f, pad=f, n_styles=spec.n_styles)
        widths = [spec.stem] + [spec.trunk] * spec.down
        self.down = nn.ModuleList(_act(widths[i], widths[i + 1], spec.norm, stride=2, n_styles=spec.n_styles)
                                  for i in range(spec.down))
        self.front = Chain(*(Residual(_act(spec.stem, spec.stem, spec.norm, n_styles=spec.n_styles))
                             for _ in range(spec.front)))
        trunk = widths[-1]
        self.blocks = Chain(*(ResBlock(trunk, inner, spec) for inner in spec.block_inner(trunk)))
        # Each up: a conv to 4x the width below [+ instance norm, before the shuffle where it follows its conv
        # channel for channel, as pruning needs], then pixel-shuffle x2 (no upsampling copies).
        self.up = nn.ModuleList(self._up(widths[i + 1], widths[i], spec) for i in reversed(range(spec.down)))
        pixels = nn.Conv2d(spec.head or spec.stem, (spec.tail or 3) * f * f, 3, 1, 1)
        self.head = nn.Sequential(_act(spec.stem, spec.head, "none"), pixels) if spec.head else pixels
        # The tail before the shuffle: its channels are the full-resolution ones unshuffled (each normed alone).
        reach = -(-(spec.tail_kernel // 2) // f)
        self.tail = Chain(_instance_norm(spec.tail * f * f, spec.n_styles), nn.ReLU(),
                          nn.Conv2d(spec.tail * f * f, 3 * f * f, 2 * reach + 1, 1, reach, bias=not spec.out_norm)
                          ) if spec.tail else None
        self.shuffle = nn.PixelShuffle(f) if f > 1 else nn.Identity()
        self.out_norm = Chain(_instance_norm(3, spec.n_styles)) if spec.out_norm else None

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """RGB [0, 1] (and, holding several styles, a mix [n_styles] or [B, n_styles]) -> RGB in (0, 1)."""
        style = None
        if self.spec.n_styles > 1:
            if style_weights is None:
                raise ValueError(f"a {self.spec.n_styles}-style edge_net needs style_weights")
            style = batched_style(style_weights)
        x = self.stem(x, style)
        x = self.front(x, style)
        for layer in self.down:
            x = layer(x, style)
        x = self.blocks(x, style)
        for layer in self.up:
            x = layer(x, style)
        x = self.head(x)
        if self.tail is not None:
            x = self.tail(x, style)
        x = self.shuffle(x)
        return torch.sigmoid(self.out_norm(x, style) if self.out_norm is not None else x)

    @staticmethod
    def _up(cin: int, cout: int, spec: EdgeNetSpec) -> Chain:
        conv = nn.Conv2d(cin, 4 * cout, 3, 1, 1, bias=not spec.up_norm)
        norm = [_instance_norm(4 * cout, spec.n_styles)] if spec.up_norm else []
        return Chain(conv, *norm, nn.PixelShuffle(2), nn.ReLU())

    def current_spec(self) -> EdgeNetSpec:
        """Widths read off the layers (a pruned student describes itself)."""
        spec = self.spec
        stem = self.stem[0].out_channels
        trunk = self.down[-1][0].out_channels if self.down else spec.trunk
        head = self.head[0][0].out_channels if spec.head else 0
        inner = [block.body[0][0].out_channels for block in self.blocks]
        uniform = inner == spec.default_inner(trunk if self.down else stem)  # spec.json lists them only when pruned apart
        return spec.model_copy(update={"stem": stem, "trunk": trunk, "head": head, "inner": None if uniform else inner})


def graft(model: EdgeNet, trunk: list[ResidualWeights], output_layers: OutputLayers | None = None) -> int:
    """Start ``model``'s ``norm`` residual blocks as the teacher's first ones, its ``out_norm`` as the teacher's
    output norm (each style's output colours from the first step) and its ``tail`` as the teacher's RGB conv and
    the norm before it, where both have them; returns how many residual blocks were grafted.

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
            _copy_norm(norm, gamma, beta)
    if output_layers is not None and model.out_norm is not None:
        _copy_norm(model.out_norm[0], *output_layers.output_norm)
    if output_layers is not None and model.tail is not None:
        norm, _, conv = model.tail
        spec, theirs = model.spec, output_layers.rgb_weight
        if tuple(theirs.shape) != (3, spec.tail, spec.tail_kernel, spec.tail_kernel):
            raise ValueError(f"the teacher's RGB conv is {tuple(theirs.shape)}, the student's tail takes "
                             f"{spec.tail} channels through a {spec.tail_kernel}x{spec.tail_kernel} conv (give the "
                             f"student tail: {theirs.shape[1]}, tail_kernel: {theirs.shape[-1]})")
        with torch.no_grad():
            conv.weight.copy_(unshuffled_kernel(theirs, spec.unshuffle))
        phases = spec.unshuffle ** 2  # each full-resolution channel's scale and shift, for each of its phases
        _copy_norm(norm, *(t.repeat_interleave(phases, dim=-1) for t in output_layers.input_norm))
    return len(model.blocks)


def unshuffled_kernel(weight: torch.Tensor, f: int) -> torch.Tensor:
    """The conv at 1/``f`` resolution, between a pixel unshuffle and a pixel shuffle by ``f``, that computes exactly
    what ``weight`` (k x k, zero padding k // 2) computes at full resolution: output phase (a, b) of channel o
    takes input phase (i, j) of channel c at offset u = f * p + i - a (and v alike) of the full-resolution kernel."""
    cout, cin, k, _ = weight.shape
    r = k // 2
    reach = -(-r // f)
    out = weight.new_zeros(cout * f * f, cin * f * f, 2 * reach + 1, 2 * reach + 1)
    offsets = range(-reach, reach + 1)
    for a, b, i, j in itertools.product(range(f), repeat=4):
        for p, q in itertools.product(offsets, offsets):
            u, v = f * p + i - a, f * q + j - b
            if abs(u) <= r and abs(v) <= r:
                out[a * f + b::f * f, i * f + j::f * f, p + reach, q + reach] = weight[:, :, u + r, v + r]
    return out


def _copy_norm(norm: nn.Module, gamma: torch.Tensor, beta: torch.Tensor) -> None:
    """A teacher's norm scale and shift into ``norm`` (an affine instance norm, or a conditional one's tables)."""
    scale, shift = (norm.gamma, norm.beta) if isinstance(norm, ConditionalInstanceNorm) else (norm.weight, norm.bias)
    if gamma.shape != scale.shape:
        theirs, mine = (t.shape[0] if t.dim() == 2 else 1 for t in (gamma, scale))
        raise ValueError(f"the teacher's norms hold {theirs} style(s), the student's {mine} (give the student "
                         f"n_styles: {theirs}, or keep one style of the teacher first: model.select_style)")
    with torch.no_grad():
        scale.copy_(gamma)
        shift.copy_(beta)


def select_style(model: EdgeNet, style_weights: torch.Tensor, label: str) -> EdgeNet:
    """The one-style student that computes exactly what ``model`` does for one style mix: each conditional norm's
    gamma/beta tables become the mix's row, an instance norm's affine (one input, int8-quantizable)."""
    single = EdgeNet(model.current_spec().model_copy(update={"n_styles": 1, "style": label}))
    mix = batched_style(style_weights).to(next(model.parameters()).dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if isinstance(model.get_submodule(owner), ConditionalInstanceNorm):
            name = f"{owner}.{'weight' if leaf == 'gamma' else 'bias'}"
            tensor = (mix @ tensor)[0]
        state[name] = tensor
    single.load_state_dict(state)
    return single.eval()


def edge_objective(config: Any, vgg: nn.Module, teacher: nn.Module | None, student: EdgeNet) -> Objective:
    """Output MSE (what PSNR measures) + L1 to any teacher's output, plus VGG perceptual when weighted, plus the
    residual trunk's input and output (``trunk_weight``) for a teacher whose trunk the student's matches.

    Batches of 6-channel (input, target) pairs carry the teacher's outputs already (``TeacherPairs``). A student
    of several styles learns a teacher holding the same styles, both run on the mixes drawn for each batch."""
    if teacher is None or not config.output_weight:
        raise ValueError("an edge_net student learns from a teacher: give a teacher and a nonzero output_weight")
    n_styles = student.spec.n_styles
    if n_styles > 1 and (not hasattr(teacher, "spec") or get_family(teacher).n_styles(teacher) != n_styles):
        raise ValueError(f"a {n_styles}-style edge_net learns a teacher holding the same {n_styles} styles (the "
                         "model stage's multi-style network, without select_style)")
    trunk_weight = getattr(config, "trunk_weight", 0.0)
    teacher_ends = student_ends = ()  # whose inputs are compared (none without trunk_weight)
    if trunk_weight:
        if not hasattr(teacher, "spec"):
            raise ValueError("trunk_weight compares inner features: it needs the model stage's teacher, not an ONNX one")
        teacher_ends = get_family(teacher).trunk_ends(teacher)
        student_ends = get_family(student).trunk_ends(student)

    def objective(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted: list[torch.Tensor] = []
        style = (sample_style_weights(batch, n_styles),) if n_styles > 1 else ()
        if batch.shape[1] == 6:  # (input, teacher output) pairs: compressor.blackbox.TeacherPairs
            batch, target = batch[:, :3], batch[:, 3:]
        else:
            with torch.no_grad(), module_inputs(teacher_ends) as wanted:
                target = teacher(batch, *style)
        with module_inputs(student_ends) as got:
            output = model(batch, *style)
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


class EdgeNetFamily(StyleWeightsInput):
    """One input (RGB [0, 1]), one output, built to be distilled from any teacher and run in int8; or, holding
    several styles, a style-weights input too (the hooks of ``multistyle``'s networks)."""

    name = "edge_net"
    spec = EdgeNetSpec
    module = EdgeNet
    role = "style_transformer"
    size_multiple = 16  # unshuffle * 2**down is at most 4 * 4

    def inputs(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The batch, and a 1-D style-weights ``style`` when one is given (a one-style student ignores it)."""
        return (batch,) if style is None or style.dim() != 1 else (batch, style.to(batch.device))

    def select_style(self, model: EdgeNet, style_weights: str) -> EdgeNet:
        if model.spec.n_styles == 1:
            return super().select_style(model, style_weights)
        weights = parse_style_weights(style_weights, model.spec.n_styles)
        return select_style(model, weights, f"{model.spec.style or 'edge_net'}[{style_weights}]")

    def customized_pruners(self, model: EdgeNet) -> dict[type, Any]:
        if model.spec.n_styles == 1:
            return {}
        from compressor.models.conditional_norm_pruning import CUSTOMIZED_PRUNERS

        return CUSTOMIZED_PRUNERS

    def before_prune(self, model: EdgeNet, config: Any, finetune: bool) -> None:
        if model.spec.down > 1:
            raise ValueError(f"an edge_net with down: {model.spec.down} cannot be pruned (its stride-2 widths and "
                             "its ups' pixel shuffles cannot both follow; prune a student with down: 0 or 1)")

    def protected_layers(self, model: EdgeNet, config: Any) -> list[nn.Module]:
        """The head's last conv (its outputs are pixels after the shuffle, or the tail's unshuffled channels) and
        the tail's RGB conv; with a stride-2 conv, the up's conv and the stem: a pixel shuffle maps 4 of the up's
        channels to 1 of the stem's width, which torch-pruning (1.6) takes for a 1:1 map, indexing past the end;
        so only the trunk and its blocks narrow there (the front adds to the stem's width, so it keeps it too)."""
        pixels = model.head[-1] if model.spec.head else model.head
        return [pixels, *([model.tail[-1]] if model.tail is not None else []),
                *([model.stem[0], *(layer.body[0] for layer in model.front), model.up[0][0]]
                  if model.spec.down else [])]

    def objective(self, student, teacher, config, vgg, style_grams, style_images) -> Objective:
        return edge_objective(config, vgg, teacher, student)

    def trunk_ends(self, model: EdgeNet) -> tuple[nn.Module, nn.Module]:
        return model.blocks, model.up[0] if len(model.up) else model.head

    def graft(self, student: EdgeNet, trunk: list[ResidualWeights], output_layers: OutputLayers | None = None) -> int:
        return graft(student, trunk, output_layers)


register_family(EdgeNetFamily())
