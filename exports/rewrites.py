"""Deployment rewrites: exact module substitutions applied per format before conversion.

LiteRT's XNNPACK delegate does not take MIRROR_PAD (ReflectionPad2d), so the
graph splits into many partitions. ``slice_pad`` rebuilds reflection padding
from single-row/column slices and a concat, which XNNPACK delegates, and which
copies the same values: the rewritten module is checked bit-for-bit against
the original before any conversion. ``concat_upsample`` does the same for
nearest x2 upsampling (no RESIZE_NEAREST_NEIGHBOR in XNNPACK either). Families
declare rewrites of their own module classes (TransformerNet's ``explicit_grid``
for the spatial transformer's grid under Core ML).

``explicit_instance_norm`` writes InstanceNorm2d as mean / variance / rsqrt over
H, W. The converter lowers ``aten.instance_norm`` through NCHW<->NHWC
TRANSPOSEs around every norm (32 in TransformerNet); the explicit form reduces
over NHWC's spatial axes directly (6 left), which made full-integer LiteRT 1.27x
faster at 256 px here. It reorders float sums, so it is checked to 1e-4 rather
than bit-for-bit.

``subpixel_output_conv`` computes a stride-1 conv with at most 4 output channels
(TransformerNet's 9x9 RGB layer) as a stride-2 conv with 4x the outputs and a
10x10 kernel, then a pixel shuffle. GEMM kernels tile output channels by 8-16,
so 3 outputs waste most of each tile; 12 fill it. The extra kernel taps are
zeros, so the values are the same; 1.2x the MACs run about 3x faster (512 px,
2 threads: torch / ORT / LiteRT float, 1.5x LiteRT int8).

``space_to_depth_input_conv`` is the other end: a strided conv on at most 4 input channels (edge_net's stem,
a 6x6 stride-2 conv on RGB) becomes a pixel unshuffle and a stride-1 conv on 4x the channels with a 3x3
kernel. Same taps, so the same values; but int8 GEMM kernels read each kernel tap's channels in groups of 4
to 16, and 3 channels per tap leave most of each group empty: on LiteRT int8 at 512 px the stem alone ran
about 2x faster as unshuffle + 3x3 conv on 12 channels. ONNX keeps the strided form (its unshuffle's
Reshape/Transpose cost ORT more than the conv saves).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from compressor.models import families, get_family
from compressor.models.registry import replace_modules
from exports.common import ExportError


def _reflect(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    # Note: the converter folds this into one CONCATENATION of before + 1 + after inputs; XNNPACK delegates
    # 2 to 5 inputs, so padding 1-2 is delegated, the 9x9 layers' padding 4 still is not.
    n = x.shape[dim]
    head = [x.narrow(dim, i, 1) for i in range(before, 0, -1)]
    tail = [x.narrow(dim, n - 1 - i, 1) for i in range(1, after + 1)]
    return torch.cat([*head, x, *tail], dim) if head or tail else x


class SlicePad2d(nn.Module):
    """ReflectionPad2d as slices + concat (same values, no MIRROR_PAD op)."""

    def __init__(self, padding: tuple[int, int, int, int]):
        super().__init__()
        self.padding = padding  # left, right, top, bottom (ReflectionPad2d order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.padding
        return _reflect(_reflect(x, -1, left, right), -2, top, bottom)


def slice_pad(model: nn.Module) -> int:
    """Replace every ReflectionPad2d in ``model`` (in place); returns how many."""
    return replace_modules(model, lambda m: SlicePad2d(tuple(m.padding)) if isinstance(m, nn.ReflectionPad2d) else None)


class ExplicitInstanceNorm2d(nn.Module):
    """InstanceNorm2d (no running stats) as mean, biased variance and rsqrt over H, W."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean((2, 3), keepdim=True)
        scale = torch.rsqrt((centred * centred).mean((2, 3), keepdim=True) + self.eps)
        if self.weight is None:
            return centred * scale
        return centred * (scale * self.weight.view(1, -1, 1, 1)) + self.bias.view(1, -1, 1, 1)


def explicit_instance_norm(model: nn.Module) -> int:
    """Replace every InstanceNorm2d without running statistics (in place); returns how many."""
    return replace_modules(model, lambda m: ExplicitInstanceNorm2d(m) if isinstance(m, nn.InstanceNorm2d)
                           and not m.track_running_stats else None)


class SubpixelConv2d(nn.Module):
    """``conv`` (stride 1, no padding) as a stride-2 conv over the four output phases, then pixel shuffle.

    Weights keep the replaced conv's name, so exported node names (and keep-float patterns) are unchanged.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        k = conv.kernel_size[0]
        phases = conv.weight.new_zeros(conv.out_channels, 2, 2, conv.in_channels, k + 1, k + 1)
        for row in range(2):
            for col in range(2):
                phases[:, row, col, :, row:row + k, col:col + k] = conv.weight.detach()
        self.kernel_size = k
        self.weight = nn.Parameter(phases.flatten(0, 2))
        bias = conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        self.bias = nn.Parameter(bias.repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2] - self.kernel_size + 1, x.shape[-1] - self.kernel_size + 1
        if height % 2 or width % 2:  # the last phase row/column reads one past the edge: pad, then crop it off
            x = F.pad(x, (0, width % 2, 0, height % 2))
        y = F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, stride=2), 2)
        return y[..., :height, :width]


def subpixel_output_conv(model: nn.Module) -> int:
    """Replace every square stride-1, unpadded conv with at most 4 output channels (in place); returns how many."""

    def make(m: nn.Module) -> nn.Module | None:
        fits = (isinstance(m, nn.Conv2d) and m.out_channels <= 4 and m.groups == 1 and m.stride == (1, 1)
                and m.padding == (0, 0) and m.dilation == (1, 1) and m.kernel_size[0] == m.kernel_size[1] > 1)
        return SubpixelConv2d(m) if fits else None

    return replace_modules(model, make)


class SpaceToDepthConv2d(nn.Module):
    """``conv`` (stride s, kernel and padding multiples of s) as pixel unshuffle by s, then a stride-1 conv.

    Weight [o, c*s*s + a*s + b, i, j] = the strided conv's weight [o, c, s*i + a, s*j + b]. Weights keep the
    replaced conv's name, so exported node names (and keep-float patterns) are unchanged.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        s, k = conv.stride[0], conv.kernel_size[0]
        weight = conv.weight.detach().reshape(conv.out_channels, conv.in_channels, k // s, s, k // s, s)
        self.block, self.padding = s, conv.padding[0] // s
        self.weight = nn.Parameter(weight.permute(0, 1, 3, 5, 2, 4).flatten(1, 3).contiguous())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pixel_unshuffle(x, self.block), self.weight, self.bias, padding=self.padding)


def space_to_depth_input_conv(model: nn.Module) -> int:
    """Replace every square strided conv on at most 4 input channels whose kernel and padding are multiples of
    its stride (in place); returns how many."""

    def make(m: nn.Module) -> nn.Module | None:
        s = m.stride[0] if isinstance(m, nn.Conv2d) else 1
        fits = (s > 1 and m.in_channels <= 4 and m.groups == 1 and m.stride == (s, s) and m.dilation == (1, 1)
                and m.kernel_size[0] == m.kernel_size[1] and m.kernel_size[0] % s == 0
                and m.padding == (m.padding[0],) * 2 and m.padding[0] % s == 0 and m.padding_mode == "zeros")
        return SpaceToDepthConv2d(m) if fits else None

    return replace_modules(model, make)


def _repeat2(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Each row/column twice along ``dim`` (negative): nearest x2 as concat + reshape."""
    u = x.unsqueeze(dim)
    shape = list(x.shape)
    shape[dim] *= 2
    return torch.cat([u, u], dim).reshape(shape)


class ConcatUpsample2x(nn.Module):
    """Nearest-neighbour x2 upsampling as concat + reshape (same values; XNNPACK has no RESIZE_NEAREST_NEIGHBOR)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _repeat2(_repeat2(x, -1), -2)


def concat_upsample(model: nn.Module) -> int:
    """Replace nearest x2 ``nn.Upsample`` modules in place; returns how many."""
    return replace_modules(model, lambda m: ConcatUpsample2x() if isinstance(m, nn.Upsample) and m.mode == "nearest"
                           and m.scale_factor in (2, 2.0, (2.0, 2.0)) else None)


# Generic rewrites, keyed on torch module types. Families add their own (``Family.rewrites``, e.g. TransformerNet's
# ``explicit_grid`` for its spatial transformer) and extra names per format (``Family.format_rewrites``).
REWRITES = {"slice_pad": slice_pad, "concat_upsample": concat_upsample,
            "explicit_instance_norm": explicit_instance_norm, "subpixel_output_conv": subpixel_output_conv,
            "space_to_depth_input_conv": space_to_depth_input_conv}
# Rewrites that reorder float arithmetic: checked with this absolute/relative tolerance instead of bit-for-bit.
TOLERANCE = {"explicit_instance_norm": 1e-4, "subpixel_output_conv": 1e-4, "space_to_depth_input_conv": 1e-4}
# Rewrites each format gets by default (ONNX Runtime and Core ML run reflection padding and resizing natively;
# Core ML's targets were not measured here, so it gets only what it needs to convert).
FORMAT_REWRITES: dict[str, tuple[str, ...]] = {
    "onnx": ("subpixel_output_conv",),
    "tflite": ("slice_pad", "concat_upsample", "explicit_instance_norm", "subpixel_output_conv",
               "space_to_depth_input_conv"),
    "coreml": (),
}


def format_rewrites(model: nn.Module, fmt: str) -> tuple[str, ...]:
    """The rewrites ``model`` gets for ``fmt``: the format's generic ones, then its family's extras."""
    extra = get_family(model).format_rewrites.get(fmt, ())
    return FORMAT_REWRITES[fmt] + tuple(n for n in extra if n not in FORMAT_REWRITES[fmt])


def _rewrite(model: nn.Module, name: str) -> int:
    """Apply rewrite ``name``: the generic one and the model's family's one, whichever exist."""
    fns = [REWRITES.get(name), get_family(model).rewrites.get(name)]
    return sum(fn(model) for fn in fns if fn is not None)


def apply_rewrites(
    model: nn.Module, names: tuple[str, ...] | list[str], inputs: tuple[torch.Tensor, ...]
) -> tuple[nn.Module, list[dict]]:
    """A rewritten copy of ``model`` and one record per rewrite.

    Raises unless the outputs stay bit-identical, or within ``TOLERANCE`` when a rewrite reorders float sums.
    """
    known = set(REWRITES).union(*(f.rewrites for f in families()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ExportError(f"unknown rewrite(s) {unknown}; choose from {sorted(known)}")
    if not names:
        return model, []
    rewritten = copy.deepcopy(model).eval()
    records = [{"name": n, "modules_replaced": _rewrite(rewritten, n)} for n in names]
    with torch.no_grad():
        before, after = model(*inputs), rewritten(*inputs)
    pairs = list(zip(before.values(), after.values()) if isinstance(before, dict) else [(before, after)])
    exact = all(torch.equal(a, b) for a, b in pairs)
    tolerance = max((TOLERANCE.get(n, 0.0) for n in names), default=0.0)  # 0: bit-for-bit
    max_diff = max(float((a - b).abs().max()) for a, b in pairs)
    if not all(torch.allclose(a, b, rtol=tolerance, atol=tolerance) for a, b in pairs):
        raise ExportError(f"rewrite(s) {list(names)} changed the model's outputs (max abs difference {max_diff:.3g}, "
                          f"allowed {tolerance:g}); refusing to export")
    for r in records:
        r["bit_identical"] = exact
        r["max_abs_difference"] = max_diff
    return rewritten, records
