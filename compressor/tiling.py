"""Tiled stylization with the whole image's instance-norm statistics, in bounded memory.

Instance norm makes a style network global: every output pixel depends on the mean and variance of
whole feature maps. Stylizing a big photo tile by tile would therefore change colour and contrast
from tile to tile. Here every normalisation's statistics are frozen while each overlapping tile runs.
With the statistics frozen the network is local (it sees only its receptive field), so tiles
overlapping by a halo that wide give the whole-image result, and their seams are simply cropped off.

Which statistics: by default the whole image's, exactly. A thumbnail's (URST: Chen et al., AAAI 2022)
start them; then one pass over the tiles per normalisation, in call order, merges that normalisation's
mean and variance over the tiles' cores, with every earlier one already exact and the forward pass
stopped right after it. Each pass resumes each window from the deepest feature map an earlier pass
cached on disk (``measure_cuts``: a call of the model's forward to a child after which nothing earlier is
needed, small enough to store), so the stem is not recomputed for every normalisation. A thumbnail's
statistics alone (``statistics="thumbnail"``) cost one pass, but Magenta's networks paint visibly
different strokes from them (``benchmarks/bench_tiling.py``).

The hook is a ``TorchFunctionMode``: it intercepts ``F.instance_norm`` (TransformerNet, conditional
instance norm, whose own affine or per-style parameters still apply afterwards) and the functions in
``STATISTIC_FUNCTIONS``, which opt in through ``torch.overrides`` (AdaIN's ``mean_std``: its content
statistics come from the thumbnail too). Any network built from those is covered without per-family
code; one that warps the whole image (a spatial transformer) is refused.

Memory: the image is decoded once into a uint8 file-backed map, each tile becomes float on its own, and its
core is written as uint8 rows into a second map; finished bands of rows leave the resident set. So a 100 MP
photo needs the decoder's image (400 MB) while decoding and saving, and about one tile in between.
"""

from __future__ import annotations

import contextlib
import functools
import math
import mmap
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from compressor.data import ImageError, reading_image, to_rgb
from compressor.io import atomic_write
from compressor.losses import mean_std

# Functions returning normalisation statistics; frozen while tiling, like F.instance_norm's.
STATISTIC_FUNCTIONS = (mean_std,)
# Ops that see the whole image at once: a tile cannot reproduce them.
GLOBAL_OPS = (F.affine_grid, F.grid_sample)
DEFAULT_THUMBNAIL = 1024  # longest side of the statistics thumbnail (URST uses 1000-1024)
STATISTICS = ("exact", "thumbnail")  # the whole image's normalisation statistics, or a thumbnail's (faster)
MAX_WINDOW = 2048
# Of the budget left after the resident set, the share tiles may plan on: freed heap pages fragment as tiles run
# (peak over plan, measured here: 6 tiles -30 %, 35 tiles +1 %, 126 tiles +13 %, in bench_tiling's results).
HEAP_HEADROOM = 0.85
DECODED_BYTES_PER_PIXEL = 4.2  # Pillow holds RGB as 4 bytes a pixel while decoding and encoding (plus a band)
BASELINE_BYTES = 750 * 2**20  # resident before any image is read (interpreter, torch, model), where unmeasurable
Run = Callable[[torch.Tensor], torch.Tensor]


class TilingError(ValueError):
    """A network or request that cannot be tiled; the message says what to do instead."""


# ---------------------------------------------------------------------------------------------------------------
# Statistics: record on the thumbnail, replay on every tile


@dataclass
class NormStats:
    """One (a, b) pair of (N, C) tensors per normalisation call, in call order.

    For ``F.instance_norm`` calls a, b are the mean and biased variance of the input; for a function
    in ``STATISTIC_FUNCTIONS`` they are its two outputs, flattened.
    """

    entries: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def channels(self) -> list[int]:
        return [a.shape[1] for a, _ in self.entries]

    def packed(self) -> torch.Tensor:
        """All statistics as one (2, K) tensor (row 0: a, row 1: b), the tile artifact's input."""
        return torch.stack([torch.cat([a[0] for a, _ in self.entries]), torch.cat([b[0] for _, b in self.entries])])

    @classmethod
    def unpack(cls, packed: torch.Tensor, channels: list[int]) -> NormStats:
        a, b = packed[0].split(channels), packed[1].split(channels)
        return cls([(x[None], y[None]) for x, y in zip(a, b)])


def frozen_instance_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
                         bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Instance norm with given (N, C) statistics, folded into one multiply-add."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return torch.addcmul(shift[..., None, None], x, scale[..., None, None])


class Moments:
    """Count, mean and sum of squared deviations of one normalisation's input, merged tile core by tile core
    (Chan et al.'s parallel variance) in float64; ``statistics()`` gives what the normalisation uses."""

    def __init__(self):
        self.count = 0.0
        self.mean = self.m2 = torch.zeros(())  # set by the first ``add``
        self.finish: Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]] = _mean_var

    def add(self, count: float, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Merge ``count`` values per channel with per-channel ``mean`` and biased ``var``."""
        mean, m2 = mean.double().flatten(), var.double().flatten() * count
        if not self.count:
            self.count, self.mean, self.m2 = float(count), mean, m2
            return
        delta, merged = mean - self.mean, self.count + count
        self.mean = self.mean + delta * (count / merged)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / merged)
        self.count = merged

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.finish(self.mean, self.m2 / self.count, self.count)
        return a.float()[None], b.float()[None]


def _mean_var(mean: torch.Tensor, var: torch.Tensor, count: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An instance norm's statistics: mean and biased variance."""
    return mean, var


class _Measured(Exception):
    """Raised once the normalisation being measured has been: the rest of the forward pass is not needed."""


@dataclass(frozen=True)
class Core:
    """The pixels of a ``height`` x ``width`` window whose outputs are kept: rows ``top:bottom``, columns
    ``left:right`` (the halo excluded; bounds on the stride grid, so they fall on every feature map's grid)."""

    top: int
    bottom: int
    left: int
    right: int
    height: int
    width: int

    def region(self, x: torch.Tensor) -> torch.Tensor:
        """The part of a feature map of the window (any resolution) under the core."""
        fh, fw = x.shape[-2:]
        bottom = fh if self.bottom == self.height else self.bottom * fh // self.height
        right = fw if self.right == self.width else self.right * fw // self.width
        return x[..., self.top * fh // self.height : bottom, self.left * fw // self.width : right]


class NormStatistics(TorchFunctionMode):
    """Inside ``with NormStatistics():`` records every normalisation's statistics into ``.stats``;
    inside ``with NormStatistics(stats):`` every normalisation uses those instead of its input's. With a
    ``core``, normalisation ``measure`` instead adds its input's moments under the core to ``moments``, and the
    forward pass stops there (``_Measured``)."""

    def __init__(self, stats: NormStats | None = None, core: Core | None = None, measure: int | None = None,
                 moments: Moments | None = None, start: int = 0):
        super().__init__()
        self.recording = stats is None
        self.stats = NormStats([]) if stats is None else stats
        self.core, self.measure, self.moments = core, measure, moments
        self.sizes: list[tuple[int, ...]] = []  # each normalisation input's spatial size, in call order
        self.calls = start  # a run resumed after a cut (``Resumed``) makes its first call there

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.instance_norm:
            return self._instance_norm(*args, **kwargs)
        if func in STATISTIC_FUNCTIONS:
            return self._statistic(func, args, kwargs)
        if func in GLOBAL_OPS:
            raise TilingError(f"the network calls {func.__name__} (a spatial transformer warps the whole image), so "
                              "it cannot be tiled; use `tile` 0 or a smaller `size`")
        return func(*args, **kwargs)

    def _instance_norm(self, x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                       momentum=0.1, eps=1e-5):
        if not use_input_stats:  # running statistics (track_running_stats in eval): already global
            return F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
        self.sizes.append(tuple(x.shape[2:]))
        if self.recording:
            self.stats.entries.append((x.mean((2, 3)), x.var((2, 3), unbiased=False)))
            return F.instance_norm(x, None, None, weight, bias, True, momentum, eps)
        self._measure(x, _mean_var)
        mean, var = self._next(x.shape[1])
        return frozen_instance_norm(x, mean, var, weight, bias, eps)

    def _statistic(self, func, args, kwargs):
        x = args[0]
        self.sizes.append(tuple(x.shape[2:]))
        if self.recording:
            a, b = func(*args, **kwargs)
            self.stats.entries.append((a.flatten(1), b.flatten(1)))
            return a, b
        eps = kwargs.get("eps", 1e-5)
        self._measure(x, lambda mean, var, n: (mean, (var * n / max(n - 1, 1) + eps).sqrt()))  # mean_std's std
        a, b = self._next(x.shape[1])
        shape = (a.shape[0], a.shape[1], *([1] * (x.dim() - 2)))
        return a.view(shape), b.view(shape)

    def _measure(self, x: torch.Tensor, finish: Callable) -> None:
        if self.core is None or self.calls != self.measure:
            return
        region = self.core.region(x).flatten(2)
        var, mean = torch.var_mean(region, dim=2, unbiased=False)
        self.moments.finish = finish
        self.moments.add(region.shape[-1], mean, var)
        raise _Measured

    def _next(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.calls >= len(self.stats.entries) or self.stats.entries[self.calls][0].shape[1] != channels:
            raise TilingError(f"normalisation call {self.calls} ({channels} channels) does not match the recorded "
                              f"statistics ({self.stats.channels}): the network ran differently on the thumbnail")
        entry = self.stats.entries[self.calls]
        self.calls += 1
        return entry


def record_stats(run: Run, image: torch.Tensor) -> tuple[NormStats, torch.Tensor]:
    """Run ``run`` on ``image`` (1, 3, h, w) with its own statistics; returns them and the output."""
    with torch.no_grad(), NormStatistics() as mode:
        out = run(image)
    if not mode.stats.entries:
        raise TilingError("the network has no instance normalisation: nothing to take from a thumbnail")
    return mode.stats, out


def run_frozen(run: Run, image: torch.Tensor, stats: NormStats) -> torch.Tensor:
    """Run ``run`` on ``image`` with every normalisation using ``stats``."""
    with torch.no_grad(), NormStatistics(stats) as mode:
        out = run(image)
    if mode.calls != len(stats.entries):
        raise TilingError(f"the network made {mode.calls} normalisation calls, the thumbnail {len(stats.entries)}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Resuming a forward pass from a cached feature map (the statistics passes' shortcut)


# Feature maps cached per window between statistics passes, at most this many bytes per input pixel: a 1/2-scale
# 32-channel map (32) and a 1/4-scale trunk (8) qualify, a full-scale 32-channel stem (128) does not (its disk
# and I/O would cost about what recomputing it does: benchmarks/bench_tiling.py).
CUT_BYTES_PER_PIXEL = 32
SKIPPED = torch.empty(0)  # what a skipped call returns: any use of it after the cut fails the cut's check


@dataclass(frozen=True)
class Cut:
    """A call the model's own forward makes to a child module (``module``: its index among those children,
    ``call``: which call of it) after which the forward needs nothing computed before but that call's output.
    ``norms``: normalisation calls made before it returns; ``order``: its place among the children's calls."""

    module: int
    call: int
    norms: int
    order: int


class Resumed:
    """Inside ``with Resumed(children, cut, cached, cuts):`` the model's calls to ``children`` before ``cut``
    return ``SKIPPED`` (nothing is computed), the cut's returns ``cached``, and later ones run; the output of
    the last call in ``cuts`` that ran is kept in ``captured`` (cut, tensor). ``cut`` None: nothing skipped."""

    def __init__(self, children: list[nn.Module], cut: Cut | None, cached: torch.Tensor | None, cuts: list[Cut]):
        self.children, self.cut, self.cached = children, cut, cached
        self.capture = {(c.module, c.call): c for c in cuts}
        self.captured: tuple[Cut, torch.Tensor] | None = None
        self.counts = [0] * len(children)
        self.resumed = cut is None

    def __enter__(self) -> Resumed:
        self.own = [child.__dict__.get("forward") for child in self.children]  # a forward set on the instance
        for i, child in enumerate(self.children):
            child.forward = functools.partial(self._call, i, child.forward)
        return self

    def __exit__(self, *exc) -> None:
        for child, own in zip(self.children, self.own):
            del child.forward
            if own is not None:
                child.forward = own

    def _call(self, index: int, forward: Callable, *args, **kwargs):
        call = self.counts[index]
        self.counts[index] += 1
        if not self.resumed:
            if (index, call) != (self.cut.module, self.cut.call):
                return SKIPPED
            self.resumed = True
            return self.cached
        out = forward(*args, **kwargs)
        if (index, call) in self.capture:
            self.captured = (self.capture[(index, call)], out)
        return out


def measure_cuts(run: Run, model: nn.Module, stride: int) -> tuple[list[nn.Module], list[Cut]]:
    """The model's children called by its own forward, and the calls a run can resume after: on a probe, every
    call whose output is small enough to cache is tried (earlier calls skipped, its output given) and kept when
    the result is bit-for-bit the full run's. None where a child is also called deeper down (its calls could
    not be counted)."""
    side = 32 * stride
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(2))
    stack: list[nn.Module] = []
    children: list[nn.Module] = []
    index: dict[int, int] = {}  # id(child) -> its place in children
    counts: list[int] = []  # calls of each child so far
    events: list[tuple[int, int, int, torch.Tensor]] = []
    deeper: set[int] = set()

    def before(module, args):
        if stack and stack[-1] is model:
            if id(module) not in index:
                index[id(module)] = len(children)
                children.append(module)
                counts.append(0)
        elif stack and id(module) in index:
            deeper.add(id(module))
        stack.append(module)

    def after(module, args, out):
        stack.pop()
        if stack and stack[-1] is model:
            i = index[id(module)]
            if isinstance(out, torch.Tensor):
                events.append((i, counts[i], mode.calls, out))
            counts[i] += 1

    stats = record_stats(run, x)[0]
    handles = [m.register_forward_pre_hook(before) for m in model.modules()]
    handles += [m.register_forward_hook(after) for m in model.modules()]
    try:
        with torch.no_grad(), NormStatistics(stats) as mode:  # frozen, as the tiles run
            base = run(x)
    finally:
        for handle in handles:
            handle.remove()
    if not events or deeper:
        return [], []
    cuts = []
    for order, (module, call, norms, out) in enumerate(events):
        if out.numel() * out.element_size() > CUT_BYTES_PER_PIXEL * side * side:
            continue
        cut = Cut(module, call, norms, order)
        try:
            with torch.no_grad(), Resumed(children, cut, out.clone(), []), NormStatistics(stats, start=norms):
                again = run(x)
        except (RuntimeError, ValueError, IndexError, TypeError, TilingError):  # it used a skipped call's output
            continue
        if again.shape == base.shape and torch.equal(again, base):
            cuts.append(cut)
    return children, cuts


# ---------------------------------------------------------------------------------------------------------------
# Geometry (stride, receptive field) and memory, measured on small inputs


@dataclass(frozen=True)
class Geometry:
    """``stride``: tile origins and interior sizes are multiples of it (the network's total downsampling);
    ``halo``: the receptive-field radius in pixels, rounded up to the stride; ``bound``: per normalisation,
    whether it sees the image (False for one whose input size does not follow the image's: AdaIN's style)."""

    stride: int
    halo: int
    bound: tuple[bool, ...]


def measure_stride(run: Run, size: int = 256) -> int:
    """The network's total downsampling (4 for TransformerNet, 8 for AdaIN): the smallest shift of the input
    that shifts the output alike, statistics frozen, compared far from every border. Measured by translation,
    so a wrapper that pads inputs to a multiple (and crops back) does not hide it."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    stats, _ = record_stats(run, x)
    base = run_frozen(run, x, stats)
    c = size // 2
    centre = base[..., c - 2 : c + 2, c - 2 : c + 2]
    for shift in (1, 2, 4, 8, 16, 32):
        moved = run_frozen(run, x[..., shift:, :], stats)[..., c - shift - 2 : c - shift + 2, c - 2 : c + 2]
        if moved.shape == centre.shape and float((moved - centre).abs().max()) <= 1e-5 * max(1.0, float(base.abs().max())):
            return shift
    raise TilingError("the network is not translation-equivariant on any stride up to 32: tiles cannot be aligned")


def measure_geometry(run: Run, stride: int | None = None, seed: int = 0) -> Geometry:
    """Stride and receptive field: with frozen statistics, change a stride x stride block in the middle of a
    random probe and see how far the output changes (exactly zero outside the receptive field)."""
    stride = stride or measure_stride(run)
    gen = torch.Generator().manual_seed(seed)
    size = 16 * stride * math.ceil(8 / stride)
    while size <= 1024:
        probe = torch.rand(1, 3, size, size, generator=gen)
        stats, _ = record_stats(run, probe)
        base = run_frozen(run, probe, stats)  # compared frozen to frozen: identical arithmetic outside the field
        poked = probe.clone()
        c = size // 2
        poked[..., c : c + stride, c : c + stride] = 1 - poked[..., c : c + stride, c : c + stride]
        diff = (run_frozen(run, poked, stats) - base).abs().amax((0, 1))
        rows = torch.nonzero(diff.amax(1) > 1e-6 * float(diff.max()))[:, 0]
        cols = torch.nonzero(diff.amax(0) > 1e-6 * float(diff.max()))[:, 0]
        if rows.numel() == 0:
            raise TilingError("the output does not depend on the input: cannot measure a receptive field")
        lo, hi = int(min(rows.min(), cols.min())), int(max(rows.max(), cols.max()))
        if lo > 0 and hi < size - 1:
            radius = max(c - lo, hi - (c + stride - 1))
            return Geometry(stride, stride * math.ceil(radius / stride), _bound(run, stride))
        size *= 2
    raise TilingError("the receptive field is wider than 1024 px: the network is effectively global")


def _bound(run: Run, stride: int) -> tuple[bool, ...]:
    """Which normalisations see the image: their input's size changes with the image's."""
    sizes = []
    for side in (16 * stride, 32 * stride):
        with torch.no_grad(), NormStatistics() as mode:
            run(torch.rand(1, 3, side, side))
        sizes.append(mode.sizes)
    return tuple(a != b for a, b in zip(*sizes))


class _PeakTensorBytes(TorchFunctionMode):
    """Peak bytes held by tensors created inside the mode (views share their base's storage and are skipped)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t._base is None and not getattr(t, "_counted", False):
                nbytes = t.untyped_storage().nbytes()
                t._counted = True
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


# Allocator fragmentation, kernel workspaces and the ops counted only by their output: measured RSS growth over
# counted tensor bytes was 1.3-1.6x for TransformerNet here (see benchmarks/bench_tiling.py).
MEMORY_SAFETY = 1.6


@dataclass(frozen=True)
class MemoryModel:
    """Working memory of one forward pass: ``fixed`` + ``per_pixel`` x input pixels (bytes, safety included)."""

    fixed: float
    per_pixel: float

    def bytes_for(self, pixels: float) -> float:
        return self.fixed + self.per_pixel * pixels


def measure_memory(run: Run) -> MemoryModel:
    """Peak tensor bytes of a forward pass at two small sizes, fitted as fixed + per-pixel."""
    peaks = []
    sides = (64, 128)
    for side in sides:
        x = torch.rand(1, 3, side, side)
        with torch.no_grad(), _PeakTensorBytes() as mode:
            run(x)
        peaks.append(mode.peak)
    per_pixel = max(0.0, (peaks[1] - peaks[0]) / (sides[1] ** 2 - sides[0] ** 2))
    fixed = max(0.0, peaks[0] - per_pixel * sides[0] ** 2)
    return MemoryModel(fixed * MEMORY_SAFETY, per_pixel * MEMORY_SAFETY)


def parse_bytes(text: str) -> int:
    """'2GB', '1.5G', '800MB', '512M' or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"{text}: not a size (use e.g. 2GB, 1.5G or 800MB)")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


# ---------------------------------------------------------------------------------------------------------------
# Planning: whole image or tiles, which window, which thumbnail


@dataclass(frozen=True)
class TilePlan:
    """Windows of ``window`` px (core ``window - 2 * halo`` kept from each), statistics from a ``thumbnail``-px
    thumbnail, then (``statistics`` "exact") made the whole image's by a pass over the tiles per normalisation.
    ``window`` 0: the whole image at once."""

    window: int
    halo: int
    stride: int
    thumbnail: int
    statistics: str = "exact"

    @property
    def tiled(self) -> bool:
        return self.window > 0

    @property
    def core(self) -> int:
        return self.window - 2 * self.halo


def resident_bytes() -> int:
    """This process's resident memory (Linux; freed heap handed back first), else the usual figure: what the
    budget has already spent."""
    _release_freed_memory()()
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return BASELINE_BYTES


def held_bytes(max_memory: int) -> int:
    """What a ``max_memory`` budget counts as spent already: this process's resident memory, or nothing when the
    process holds more than the whole budget (a long-lived one: a test run, a notebook), whose budget then bounds
    what one image adds."""
    resident = resident_bytes()
    return resident if resident < max_memory else 0


def plan_tiles(height: int, width: int, geometry: Geometry, memory: MemoryModel, max_memory: int,
               tile: int | None = None, thumbnail: int = DEFAULT_THUMBNAIL, resident: int = BASELINE_BYTES,
               statistics: str = "exact") -> TilePlan:
    """Whole image when it fits ``max_memory`` (and ``tile`` is None, auto) or when ``tile`` is 0; otherwise
    the largest window the budget allows (or ``tile``), and a thumbnail that fits it too. ``resident``: the
    bytes the process holds already."""
    pixels = height * width
    whole = resident + memory.bytes_for(pixels) + 30 * pixels  # float input and output, uint8 copies
    if tile == 0 or (tile is None and whole <= max_memory):
        return TilePlan(0, geometry.halo, geometry.stride, 0)
    # input and output live in file-backed maps (stylize_file): the band of rows being tiled stays resident;
    # the headroom is for the heap's fragmentation
    band = 6 * min(height, MAX_WINDOW) * width
    room = (max_memory - resident) * HEAP_HEADROOM - memory.fixed - band
    decode = resident + DECODED_BYTES_PER_PIXEL * pixels
    if decode > max_memory:
        raise TilingError(f"`max_memory`: decoding a {width}x{height} image takes {decode / 2**30:.1f} GB (raise "
                          "`max_memory`, or give a smaller `size`)")
    min_window = 2 * geometry.halo + 4 * geometry.stride
    if tile is None:
        fit = math.sqrt(max(room, 0) / memory.per_pixel) if memory.per_pixel else MAX_WINDOW
        window = min(MAX_WINDOW, int(fit) // geometry.stride * geometry.stride)
        if window < min_window:
            need = resident + memory.bytes_for(min_window**2)
            raise TilingError(f"`max_memory`: a {width}x{height} image needs at least {need / 2**30:.1f} GB even in "
                              f"{min_window}-px tiles (raise `max_memory`, or give a smaller `size`)")
    else:
        window = tile
        if window % geometry.stride or window < min_window:
            raise TilingError(f"`tile` {tile}: use a multiple of {geometry.stride} of at least {min_window} "
                              f"(twice the {geometry.halo}-px halo plus a core)")
    side = min(thumbnail, max(height, width))
    while side > 64 and memory.bytes_for(side * side * min(height, width) / max(height, width)) > max(room, 0):
        side = side * 3 // 4
    return TilePlan(window, geometry.halo, geometry.stride, side, statistics)


def parse_plan_options(tile: int | None, max_memory: str | int, statistics: str = "exact"
                       ) -> tuple[int | None, int, str]:
    """`tile`, `max_memory` and `statistics` checked: (tile or None for automatic, budget in bytes, statistics)."""
    if statistics not in STATISTICS:
        raise TilingError(f"`statistics` {statistics!r}: use exact (the whole image's) or thumbnail (faster, "
                          "approximate)")
    if tile is not None and tile < 0:
        raise TilingError(f"`tile` {tile}: use 0 (whole image), a tile size in pixels, or leave it out (automatic)")
    try:
        budget = parse_bytes(max_memory) if isinstance(max_memory, str) else int(max_memory)
    except ValueError as exc:
        raise TilingError(f"`max_memory` {exc}") from None
    if budget < BASELINE_BYTES:
        raise TilingError(f"`max_memory` {max_memory}: below the {BASELINE_BYTES // 2**20} MB the process needs "
                          "(give more, e.g. 2GB)")
    return tile, budget, statistics


# ---------------------------------------------------------------------------------------------------------------
# Running: thumbnail statistics, then tiles into a uint8 array


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 -> (1, 3, h, w) float in [0, 1] (copied: decoded images are read-only arrays)."""
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float().div_(255.0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, h, w) float -> (h, w, 3) uint8, clamped and rounded as the whole-image path saves."""
    return tensor[0].clamp(0, 1).mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()


def thumbnail_of(image: Image.Image | np.ndarray, side: int) -> torch.Tensor:
    """The image resized (Lanczos) so its longest side is ``side``, as (1, 3, h, w) float."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    scale = side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS,
                         reducing_gap=3.0)
    return to_tensor(np.asarray(img))


def windows(height: int, width: int, plan: TilePlan) -> Iterator[tuple[slice, slice, slice, slice]]:
    """(window rows, window cols, core rows, core cols): cores tile the image; windows add the halo,
    clipped at the image edges; window origins stay on the stride grid."""
    core = plan.core
    for top in range(0, height, core):
        for left in range(0, width, core):
            rows = slice(max(0, top - plan.halo), min(height, top + core + plan.halo))
            cols = slice(max(0, left - plan.halo), min(width, left + core + plan.halo))
            yield rows, cols, slice(top, min(height, top + core)), slice(left, min(width, left + core))


class TileRunner:
    """A torch style network as tiled inference sees it: ``runner(batch)`` stylises whole images (output cropped
    to the input size); ``record`` / ``apply`` run the thumbnail and the tiles; ``plan`` picks whole or tiled.

    Geometry and memory are measured on small inputs the first time they are needed. Exported artifacts
    subclass this (exports/tile_export.py); ``fixed`` is then the window a fixed-shape artifact takes (edge
    tiles are padded to it by reflection).
    """

    fixed: int | None = None

    def __init__(self, run: Run, model: nn.Module | None = None):
        self.run = run
        self.model = model if model is not None else run if isinstance(run, nn.Module) else None
        self._geometry: Geometry | None = None
        self._memory: MemoryModel | None = None
        self._cuts: tuple[list[nn.Module], list[Cut]] | None = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.run(batch)[..., : batch.shape[-2], : batch.shape[-1]]

    @property
    def geometry(self) -> Geometry:
        if self._geometry is None:
            self._geometry = measure_geometry(self.run)
        return self._geometry

    @property
    def memory(self) -> MemoryModel:
        if self._memory is None:
            self._memory = measure_memory(self.run)
        return self._memory

    @property
    def cuts(self) -> tuple[list[nn.Module], list[Cut]]:
        """The model's children and the calls a tile's forward pass can resume after (none without a model)."""
        if self._cuts is None:
            self._cuts = measure_cuts(self.run, self.model, self.geometry.stride) if self.model else ([], [])
        return self._cuts

    def plan(self, height: int, width: int, max_memory: int, tile: int | None = None,
             thumbnail: int = DEFAULT_THUMBNAIL, statistics: str = "exact") -> TilePlan:
        if tile == 0:
            return TilePlan(0, 0, 1, 0)
        geometry, memory = self.geometry, self.memory  # measured first: their probes count as resident
        return plan_tiles(height, width, geometry, memory, max_memory, tile, thumbnail, held_bytes(max_memory),
                          statistics)

    def record(self, thumb: torch.Tensor) -> NormStats:
        return record_stats(self.run, thumb)[0]

    def apply(self, tile: torch.Tensor, stats: NormStats | None, cache: FeatureCache | None = None,
              window: int = 0) -> torch.Tensor:
        """The stylised tile; ``stats`` None: the tile's own statistics (per-tile normalisation). With a
        ``cache``, resumed from window ``window``'s cached feature map."""
        if stats is None:
            with torch.no_grad():
                return self.run(tile)
        out, mode = self._forward(tile, stats, cache, window, save=False)
        if mode.calls != len(stats.entries):
            raise TilingError(f"the network made {mode.calls} normalisation calls, the thumbnail {len(stats.entries)}")
        return out

    def measure(self, tile: torch.Tensor, stats: NormStats, core: Core, index: int, moments: Moments,
                cache: FeatureCache | None = None, window: int = 0) -> None:
        """Add to ``moments`` those of normalisation ``index``'s input under ``core``, ``stats`` frozen (the
        forward pass stops there). With a ``cache``: resumed from window ``window``'s cached feature map, and the
        deepest one this pass got through is cached for the next."""
        try:
            self._forward(tile, stats, cache, window, save=True, core=core, measure=index, moments=moments)
        except _Measured:
            return
        raise TilingError(f"the network made no normalisation call {index} on a tile")

    def _forward(self, tile: torch.Tensor, stats: NormStats, cache: FeatureCache | None, window: int, save: bool,
                 **measuring) -> tuple[torch.Tensor, NormStatistics]:
        children, cuts = self.cuts if cache is not None else ([], [])
        cut, cached = cache.load(window) if cache is not None else (None, None)
        resumed = Resumed(children, cut, cached, cuts if save else [])
        mode = NormStatistics(stats, start=cut.norms if cut else 0, **measuring)
        try:
            with torch.no_grad(), resumed, mode:
                out = self.run(tile)
        finally:
            if save and resumed.captured is not None:
                cache.save(window, *resumed.captured)
        return out, mode


class FeatureCache:
    """Per window, the feature map after the deepest cut (``measure_cuts``) a statistics pass got through, as
    float32 .npy files in ``folder``: later passes and the tile pass resume there instead of recomputing the
    network up to it (``benchmarks/bench_tiling.py`` times exact statistics with and without it)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.cuts: dict[int, Cut] = {}

    def load(self, window: int) -> tuple[Cut | None, torch.Tensor | None]:
        cut = self.cuts.get(window)
        if cut is None:
            return None, None
        return cut, torch.from_numpy(np.load(self.folder / f"{window}.npy"))

    def save(self, window: int, cut: Cut, features: torch.Tensor) -> None:
        if window in self.cuts and self.cuts[window].order >= cut.order:
            return
        np.save(self.folder / f"{window}.npy", features.contiguous().numpy())
        self.cuts[window] = cut


def _release_freed_memory() -> Callable[[], None]:
    """glibc's malloc_trim: hand freed heap pages back to the OS. Feature maps under glibc's mmap threshold
    (up to 32 MB) live on the heap; without a trim between tiles fragmentation grew the resident set by about
    24 bytes per image pixel over a 24 MP photo here. Elsewhere: nothing to do."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def _evict(pixels: np.ndarray, rows: int) -> None:
    """Write the first ``rows`` rows of a file-backed map back and drop them from the resident set (they stay
    readable: touching them again reads them from the file)."""
    if not isinstance(pixels, np.memmap) or rows <= 0:
        return
    end = min(rows, pixels.shape[0]) * pixels.shape[1] * pixels.shape[2] // mmap.PAGESIZE * mmap.PAGESIZE
    if end:
        pixels._mmap.flush(0, end)
        pixels._mmap.madvise(mmap.MADV_DONTNEED, 0, end)


def stylize_tiled(runner: TileRunner, pixels: np.ndarray, plan: TilePlan, thumbnail: torch.Tensor | None = None,
                  per_tile_stats: bool = False, progress: bool = True, out: np.ndarray | None = None,
                  scratch: str | Path | None = None) -> np.ndarray:
    """Stylise ``pixels`` ((h, w, 3) uint8) tile by tile into ``out`` (a new (h, w, 3) uint8 array by default).

    Statistics come from ``thumbnail`` (by default made from ``pixels``), made exact by :func:`exact_stats` when
    ``plan.statistics`` says so (its feature cache in a temporary folder in ``scratch``, the system's by
    default), or from each tile with ``per_tile_stats`` (for comparison). File-backed maps (``stylize_file``)
    have each finished band of rows written back and dropped from memory, so the resident set holds about one
    band, not the photo.
    """
    release = _release_freed_memory()
    height, width = pixels.shape[:2]
    cells = list(windows(height, width, plan))
    stats = cache = None
    with contextlib.ExitStack() as stack:  # the feature cache's folder, made only for exact statistics
        if not per_tile_stats:
            thumbnail = thumbnail_of(pixels, plan.thumbnail) if thumbnail is None else thumbnail
            stats = runner.record(thumbnail)
            release()
            if plan.statistics == "exact":
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="styleslim-features-", dir=scratch))
                cache = _feature_cache(runner, folder, height * width)
                stats = exact_stats(runner, pixels, plan, stats, progress, cache)
        out = np.empty((height, width, 3), dtype=np.uint8) if out is None else out
        for window, (rows, cols, core_rows, core_cols) in enumerate(
                tqdm(cells, disable=not progress or len(cells) < 2, desc="tiles", unit="tile")):
            tile, core = _window(runner, pixels, rows, cols, core_rows, core_cols)
            result = runner.apply(tile, stats, cache, window)[..., core.top : core.bottom, core.left : core.right]
            out[core_rows, core_cols] = to_uint8(result)
            del result
            if _done_with(pixels, rows, cols, width, plan):
                _evict(out, core_rows.stop)
            release()
    return out


def _feature_cache(runner: TileRunner, folder: str, pixels: int) -> FeatureCache | None:
    """A feature cache when the network has cuts and the disk has room for them (halos overlap: 1.5x)."""
    if not runner.cuts[1] or shutil.disk_usage(folder).free < 1.5 * CUT_BYTES_PER_PIXEL * pixels:
        return None
    return FeatureCache(folder)


def exact_stats(runner: TileRunner, pixels: np.ndarray, plan: TilePlan, stats: NormStats,
                progress: bool = True, cache: FeatureCache | None = None) -> NormStats:
    """The whole image's statistics of every normalisation, one pass over the tiles each, in call order: a
    normalisation's input is exact once those before it are, so its moments merged over the tiles' cores are
    the whole image's. (Updating them all at once from one pass diverges: a network normalised with a mix of
    exact and thumbnail statistics drifts further from both.) With a ``cache`` each pass resumes each window
    from the deepest feature map an earlier pass cached, instead of recomputing the network up to it."""
    release = _release_freed_memory()
    height, width = pixels.shape[:2]
    cells = list(windows(height, width, plan))
    indices = [i for i, bound in enumerate(runner.geometry.bound) if bound]
    entries = list(stats.entries)
    with tqdm(total=len(indices) * len(cells), disable=not progress or len(cells) < 2, desc="statistics",
              unit="tile") as bar:
        for index in indices:
            moments = Moments()
            for window, (rows, cols, core_rows, core_cols) in enumerate(cells):
                tile, core = _window(runner, pixels, rows, cols, core_rows, core_cols)
                runner.measure(tile, NormStats(entries), core, index, moments, cache, window)
                _done_with(pixels, rows, cols, width, plan)
                release()
                bar.update()
            entries[index] = moments.statistics()
    return NormStats(entries)


def _window(runner: TileRunner, pixels: np.ndarray, rows: slice, cols: slice, core_rows: slice,
            core_cols: slice) -> tuple[torch.Tensor, Core]:
    """A window as the runner's input (padded by reflection to a fixed-shape artifact's size) and its core."""
    tile = pixels[rows, cols]
    if runner.fixed:
        pad = ((0, runner.fixed - tile.shape[0]), (0, runner.fixed - tile.shape[1]), (0, 0))
        tile = np.pad(tile, pad, mode="symmetric")
    top, left = core_rows.start - rows.start, core_cols.start - cols.start
    core = Core(top, top + core_rows.stop - core_rows.start, left, left + core_cols.stop - core_cols.start,
                tile.shape[0], tile.shape[1])
    return to_tensor(tile), core


def _done_with(pixels: np.ndarray, rows: slice, cols: slice, width: int, plan: TilePlan) -> bool:
    """After a band of windows: drop the input rows no later window of this pass reads; True at a band's end."""
    if cols.stop != width:
        return False
    _evict(pixels, rows.stop - 2 * plan.halo)
    return True


BAND_ROWS = 256  # rows copied at a time between the decoder's image and the file-backed maps


def stylize_file(runner: TileRunner, source: str | Path, target: str | Path, plan: TilePlan,
                 size: tuple[int, int] | None = None, progress: bool = True) -> Path:
    """Decode ``source`` once (upright, resized to ``size`` (h, w) if given), stylise it in tiles, save ``target``.

    The photo and its result live in uint8 file-backed maps in a hidden folder beside the target, so memory holds
    the decoder's image (while decoding and saving) or a band of rows and one tile (while the tiles run).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        image = read_rgb(source, size)
        thumbnail = thumbnail_of(image, plan.thumbnail)
        shape = (image.height, image.width, 3)
        pixels = np.memmap(Path(tmp) / "input.u8", dtype=np.uint8, mode="w+", shape=shape)
        for top in range(0, shape[0], BAND_ROWS):
            bottom = min(shape[0], top + BAND_ROWS)
            pixels[top:bottom] = np.asarray(image.crop((0, top, shape[1], bottom)))
            _evict(pixels, bottom)
        del image
        out = np.memmap(Path(tmp) / "output.u8", dtype=np.uint8, mode="w+", shape=shape)
        stylize_tiled(runner, pixels, plan, thumbnail=thumbnail, progress=progress, out=out, scratch=tmp)
        del pixels
        return save_pixels(out, target)


def read_rgb(path: str | Path, size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image once, upright (EXIF orientation applied), as 8-bit RGB; ``size`` (h, w) resizes it."""
    path = Path(path)
    with reading_image(path), Image.open(path) as img:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy: a 100 MP decode is 400 MB a copy
        rgb = img if img.mode == "RGB" else to_rgb(img)
        return rgb.resize(size[::-1], Image.LANCZOS) if size and size != rgb.size[::-1] else rgb


def save_pixels(pixels: np.ndarray, path: str | Path) -> Path:
    """Write a (h, w, 3) uint8 array atomically, in the format the suffix names; a file-backed map is copied
    into the encoder's image band by band, each band dropped from memory once copied."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension (use .png or .jpg)")
    if isinstance(pixels, np.memmap):
        image = Image.new("RGB", (pixels.shape[1], pixels.shape[0]))
        for top in range(0, pixels.shape[0], BAND_ROWS):
            image.paste(Image.fromarray(np.asarray(pixels[top : top + BAND_ROWS])), (0, top))
            _evict(pixels, top + BAND_ROWS)
    else:
        image = Image.fromarray(pixels)
    atomic_write(path, lambda p: image.save(p, format=fmt))
    return path


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as it will be stylised (upright), read from its header only."""
    path = Path(path)
    with reading_image(path), Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)
