"""Tile artifacts: a fixed-shape graph that takes instance-norm statistics as an input.

One graph serves every pass of tiled inference (compressor/tiling.py). Inputs: ``image`` (1, 3, S, S),
``norm_stats`` (2, K: every normalisation's mean and variance, concatenated in call order), ``own_stats``
(1,) and ``core_mask`` (1, 1, S, S). Outputs: ``stylized`` and ``norm_stats_out`` (3, K): every
normalisation input's mean, variance and count of values under the mask (sampled at its resolution).
With ``own_stats`` = 1 the graph is the plain model (the thumbnail pass: mask all ones); with 0 every
normalisation uses ``norm_stats`` (the statistics passes, the mask marking the tile's core, and the
tile pass). So an S x S mobile model stylises a photo of any size at full resolution with the whole
image's statistics, tile by tile, with one look.

Verified like every artifact: both modes against torch on the held-out images, recorded in the manifest.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.data import load_image, sample_content_paths
from compressor.errors import UserError
from compressor.io import atomic_output
from compressor.models import load_model
from compressor.models.checkpoint import resolve_model_path
from compressor.stylize import Stylizer, load_stylizer
from compressor.tiling import (
    GLOBAL_OPS,
    STATISTIC_FUNCTIONS,
    Core,
    Geometry,
    Moments,
    NormStats,
    TilePlan,
    TileRunner,
    TilingError,
    frozen_instance_norm,
    measure_geometry,
    record_stats,
    run_frozen,
)
from exports.backends import backend_for_format
from exports.common import ExportError, ParityError, conversion_error, converter_output, io_names
from exports.manifest import read_manifest, versions, write_manifest
from exports.parity import PARITY_THRESHOLDS_DB, PSNR_CAP_DB
from exports.rewrites import apply_rewrites, format_rewrites
from exports.runtime import is_artifact, load_runner
from exports.stage import INPUT_RANGE, _source

log = logging.getLogger(__name__)
INPUT_NAMES = ["image", "norm_stats", "own_stats", "core_mask"]
OUTPUT_NAMES = ["stylized", "norm_stats_out"]
# explicit_instance_norm would hide the norms from the statistics hook; the hook writes them explicitly anyway.
HIDDEN_FROM_THE_HOOK = ("explicit_instance_norm",)


class _GraphStatistics(torch.overrides.TorchFunctionMode):
    """Every normalisation blends its own statistics (weight ``own``) with the given ones, and reports those of
    its input under ``mask``."""

    def __init__(self, given: torch.Tensor, own: torch.Tensor, mask: torch.Tensor, channels: list[int]):
        super().__init__()
        self.given, self.own, self.mask, self.channels = given, own, mask, channels
        self.reported: list[torch.Tensor] = []
        self.offset = 0

    def _take(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index, channels = len(self.reported), x.shape[1]
        if index >= len(self.channels) or self.channels[index] != channels:
            raise TilingError(f"normalisation call {index} ({channels} channels) differs from {self.channels}")
        given = self.given[:, self.offset : self.offset + channels]
        self.offset += channels
        self.reported.append(self._masked_moments(x))
        keep = 1.0 - self.own
        return a * self.own + given[0:1] * keep, b * self.own + given[1:2] * keep

    def _masked_moments(self, x: torch.Tensor) -> torch.Tensor:
        """(3, C): mean, biased variance and count of ``x``'s values under the mask at ``x``'s resolution."""
        step_h, step_w = self.mask.shape[2] // x.shape[2], self.mask.shape[3] // x.shape[3]
        mask = self.mask[:, :, ::step_h, ::step_w][:, :, : x.shape[2], : x.shape[3]]
        count = mask.sum((2, 3))
        mean = (x * mask).sum((2, 3)) / count
        centred = x - mean[..., None, None]
        var = (centred * centred * mask).sum((2, 3)) / count
        return torch.cat([mean, var, count.expand_as(mean)])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.instance_norm:
            return self._instance_norm(*args, **kwargs)
        if func in STATISTIC_FUNCTIONS:
            own_a, own_b = func(*args, **kwargs)
            a, b = self._take(args[0], own_a.flatten(1), own_b.flatten(1))
            return a.view_as(own_a), b.view_as(own_b)
        if func in GLOBAL_OPS:
            raise TilingError(f"the network calls {func.__name__}: it cannot be tiled")
        return func(*args, **kwargs)

    def _instance_norm(self, x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                       momentum=0.1, eps=1e-5):
        if not use_input_stats:
            return F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
        mean = x.mean((2, 3))
        centred = x - mean[..., None, None]
        var = (centred * centred).mean((2, 3))  # the explicit form: mean/var/rsqrt over H, W (LiteRT-friendly)
        mean, var = self._take(x, mean, var)
        return frozen_instance_norm(x, mean, var, weight, bias, eps)

    def packed(self) -> torch.Tensor:
        return torch.cat(self.reported, dim=1)


class TileGraph(nn.Module):
    """``model`` with its normalisation statistics as an input and an output (see the module docstring)."""

    def __init__(self, model: nn.Module, channels: list[int]):
        super().__init__()
        self.model, self.channels = model.eval(), channels
        self.input_names, self.output_names = INPUT_NAMES, OUTPUT_NAMES

    def forward(self, image: torch.Tensor, norm_stats: torch.Tensor, own_stats: torch.Tensor, core_mask: torch.Tensor):
        with _GraphStatistics(norm_stats, own_stats, core_mask, self.channels) as mode:
            out = self.model(image)
        return out, mode.packed()


def _channels(model: nn.Module, size: int) -> list[int]:
    stats, _ = record_stats(model, torch.rand(1, 3, size, size))
    return stats.channels


def _example(channels: list[int], size: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=gen)
    return image, torch.zeros(2, sum(channels)), torch.ones(1), torch.ones(1, 1, size, size)


def _export_graph(graph: TileGraph, fmt: str, path: Path, size: int) -> None:
    inputs = _example(graph.channels, size)
    with atomic_output(path) as tmp:
        try:
            if fmt == "onnx":
                import onnx
                import onnxslim

                from exports.backends.onnxruntime import OPSET

                with torch.no_grad():
                    torch.onnx.export(graph, inputs, str(tmp), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                      opset_version=OPSET, dynamo=False)
                proto = onnxslim.slim(onnx.load(str(tmp)))
                onnx.checker.check_model(proto, full_check=True)
                onnx.save(proto, str(tmp))
            else:
                import triton  # noqa: F401, I001  (before TensorFlow: TF then triton segfaults)
                import litert_torch

                with converter_output():
                    litert_torch.convert(graph, inputs).export(str(tmp))
        except TilingError:
            raise
        except Exception as exc:
            raise conversion_error(fmt.upper(), graph, inputs, exc) from exc


def export_tile_artifact(model: nn.Module | str | Path, fmt: str, out_dir: str | Path,
                         size: int = 512) -> tuple[Path, dict[str, Any]]:
    """Export ``model`` (a module or model folder) as an ``size`` x ``size`` tile artifact, verify it, write its
    manifest; returns (artifact, manifest). ONNX or TFLite, fp32."""
    if fmt not in ("onnx", "tflite"):
        raise ExportError(f"`format` {fmt}: tile artifacts are onnx or tflite")
    model_dir = None
    if not isinstance(model, nn.Module):
        model_dir = Path(model)
        model = load_model(model_dir)
    model = model.eval()
    if io_names(model) != (["image"], ["stylized"]):
        raise ExportError(f"tile artifacts are image-to-image networks; {type(model).__name__} tiles in torch "
                          "(styleslim stylize --model MODEL_DIR)")
    geometry = measure_geometry(model)
    if size % geometry.stride or size <= 2 * geometry.halo + 4 * geometry.stride:
        raise ExportError(f"`size` {size}: a tile artifact needs a multiple of {geometry.stride} above "
                          f"{2 * geometry.halo + 4 * geometry.stride} (twice the {geometry.halo}-px halo plus a core)")
    channels = _channels(model, size)
    names = tuple(r for r in format_rewrites(model, fmt) if r not in HIDDEN_FROM_THE_HOOK)
    rewritten, rewrites = apply_rewrites(model, names, (torch.rand(1, 3, size, size),))
    backend = backend_for_format(fmt)
    path = Path(out_dir) / f"model-tile{size}-fp32{backend.suffix}"
    log.info("exporting %s tile artifact %s -> %s", type(model).__name__, fmt, path)
    _export_graph(TileGraph(rewritten, channels), fmt, path, size)
    manifest = {
        "format": fmt,
        "runtime": backend.runtime,
        "precision": "fp32",
        "artifact": path.name,
        "source": _source(model, model_dir),
        "style": model.spec.style,
        "layout": "nchw",
        "inputs": [
            {"name": "image", "shape": [1, 3, size, size], "dtype": "float32", "layout": "nchw", "range": INPUT_RANGE,
             "color": "RGB"},
            {"name": "norm_stats", "shape": [2, sum(channels)], "dtype": "float32",
             "meaning": "per-channel mean (row 0) and biased variance (row 1) of every instance norm, in call order"},
            {"name": "own_stats", "shape": [1], "dtype": "float32",
             "meaning": "1: normalise with this image's statistics (thumbnail pass); 0: with norm_stats (tiles)"},
            {"name": "core_mask", "shape": [1, 1, size, size], "dtype": "float32",
             "meaning": "1 on the tile's core (halo excluded), 0 elsewhere: where norm_stats_out is measured"},
        ],
        "outputs": [
            {"name": "stylized", "dtype": "float32", "layout": "nchw", "range": "nominally [0, 1]; clamp before saving"},
            {"name": "norm_stats_out", "shape": [3, sum(channels)], "dtype": "float32",
             "meaning": "mean, biased variance and count of every normalisation input's values under core_mask; "
                        "call k's, with norm_stats exact for calls before k, merged over all tiles' cores give "
                        "the whole image's statistics of call k"},
        ],
        "tile": {"window": size, "halo": geometry.halo, "stride": geometry.stride, "channels": channels},
        "versions": versions(backend.packages),
        "rewrites": rewrites,
    }
    manifest["parity"] = tile_parity(model, _open(path), size, geometry.stride)
    write_manifest(path, manifest)
    verdict = manifest["parity"]
    if not verdict["passed"]:
        raise ParityError(f"{path}: tile parity FAILED on {verdict['runtime']}: PSNR {verdict['psnr_db']} dB < "
                          f"{verdict['threshold_db']} dB")
    return path, manifest


def _psnr(ref: torch.Tensor, got: np.ndarray) -> float:
    mse = float(np.mean((ref.numpy().astype(np.float64) - got) ** 2))
    return min(PSNR_CAP_DB, 10 * math.log10(1.0 / mse)) if mse > 0 else PSNR_CAP_DB


def tile_parity(model: nn.Module, runner, size: int, stride: int) -> dict:
    """Both modes against torch on the held-out images: own statistics vs the model, and the other image's
    statistics vs torch with them frozen; the reported moments (all of the image, then a core) vs the graph's in
    torch. The worst PSNR decides."""
    images = [F.interpolate(load_image(p).unsqueeze(0), size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
              for p in sample_content_paths("eval")]
    recorded = [record_stats(model, x) for x in images]
    graph = TileGraph(model, recorded[0][0].channels)
    whole = torch.ones(1, 1, size, size)
    core = torch.zeros(1, 1, size, size)
    edge = size // 4 // stride * stride
    core[..., edge : size - edge, edge:] = 1  # a tile at the right edge of a photo: halo above, below and left
    rows, worst, max_abs = [], math.inf, 0.0
    for i, (path, x) in enumerate(zip(sample_content_paths("eval"), images)):
        stats, ref = recorded[i]
        other = recorded[(i + 1) % len(images)][0]
        own_inputs = (x, torch.zeros(2, sum(stats.channels)), torch.ones(1), whole)
        frozen_inputs = (x, other.packed(), torch.zeros(1), core)
        out, reported = _outputs(runner, *(t.numpy() for t in own_inputs))
        frozen_out, frozen_reported = _outputs(runner, *(t.numpy() for t in frozen_inputs))
        with torch.no_grad():
            expected = [graph(*own_inputs)[1].numpy(), graph(*frozen_inputs)[1].numpy()]
        stats_error = max(float(np.abs(got - want).max() / (np.abs(want).max() or 1.0))
                          for got, want in zip((reported, frozen_reported), expected))
        frozen_ref = run_frozen(model, x, other)
        own_db, frozen_db = _psnr(ref, out), _psnr(frozen_ref, frozen_out)
        max_abs = max(max_abs, float(np.abs(ref.numpy() - out).max()), float(np.abs(frozen_ref.numpy() - frozen_out).max()))
        rows.append({"image": path.name, "own_stats_psnr_db": round(own_db, 2),
                     "given_stats_psnr_db": round(frozen_db, 2), "stats_max_rel_error": stats_error})
        worst = min(worst, own_db, frozen_db)
    threshold = PARITY_THRESHOLDS_DB["fp32"]
    return {"runtime": runner.runtime, "images": rows, "psnr_db": round(worst, 2), "max_abs_error": max_abs,
            "threshold_db": threshold, "passed": worst >= threshold}


def _open(path: Path):
    runner = load_runner(path)
    runner.output_names = OUTPUT_NAMES  # the manifest naming them is written after verification
    return runner


def _outputs(runner, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = runner(*inputs)
    return np.asarray(result["stylized"]), np.asarray(result["norm_stats_out"])


def stylizer_for(model: nn.Module | str | Path, style: str | Path | None = None, alpha: float = 1.0,
                 style_weights: str | None = None, strength: float = 1.0, keep_colors: bool = False) -> Stylizer:
    """The Stylizer of a module, an artifact file (on its runtime; tile artifacts in tiles) or anything
    ``load_any`` takes (``PACKAGE:FILE`` too); the options are refused where they do not apply."""
    runner = None
    if not isinstance(model, nn.Module):
        model = resolve_model_path(model)
        runner = load_artifact_runner(model) if is_artifact(model) else None
    return load_stylizer(model, style, alpha=alpha, runner=runner, style_weights=style_weights, strength=strength,
                         keep_colors=keep_colors)


def load_artifact_runner(path: str | Path):
    """A tile artifact as an ArtifactTileRunner (stylises any size in tiles), any other artifact as its Runner."""
    path = Path(path)
    if "tile" in (read_manifest(path) or {}):
        return ArtifactTileRunner(path)
    return load_runner(path)


class ArtifactTileRunner(TileRunner):
    """A tile artifact on its runtime, driven like a torch model by compressor.tiling.stylize_tiled."""

    def __init__(self, path: Path):
        manifest = read_manifest(path) or {}
        if [spec["name"] for spec in manifest.get("inputs", [])] != INPUT_NAMES:
            raise UserError(path, "a tile artifact from an earlier styleslim (no core_mask input: it cannot measure "
                            "the whole image's statistics)", "export it again: styleslim export MODEL --tile N")
        tile = manifest["tile"]
        super().__init__(run=None)
        self.fixed, self.channels = int(tile["window"]), list(tile["channels"])
        self._geometry = Geometry(int(tile["stride"]), int(tile["halo"]), (True,) * len(self.channels))
        self._runner = _open(path)

    def _run_graph(self, x: torch.Tensor, stats: np.ndarray | None, core: Core | None = None
                   ) -> tuple[torch.Tensor, np.ndarray]:
        own = np.ones(1, np.float32) if stats is None else np.zeros(1, np.float32)
        stats = np.zeros((2, sum(self.channels)), np.float32) if stats is None else stats
        mask = np.ones((1, 1, *x.shape[-2:]), np.float32)
        if core is not None:
            mask[:] = 0
            mask[..., core.top : core.bottom, core.left : core.right] = 1
        out, reported = _outputs(self._runner, x.numpy(), stats, own, mask)
        return torch.from_numpy(out), reported

    def _square(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.fixed, self.fixed), mode="bilinear", antialias=True).clamp(0, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Whole images squeezed to the artifact's size and back (what `tile` 0 means for a fixed shape)."""
        outs = [self._run_graph(self._square(x[None]), None)[0] for x in batch]
        return F.interpolate(torch.cat(outs), size=tuple(batch.shape[-2:]), mode="bilinear", antialias=True)

    def plan(self, height: int, width: int, max_memory: int, tile: int | None = None,
             thumbnail: int | None = None, statistics: str = "exact") -> TilePlan:
        if tile == 0:
            return TilePlan(0, 0, 1, 0)
        if tile not in (None, self.fixed):
            raise TilingError(f"`tile` {tile}: this artifact takes {self.fixed}x{self.fixed} tiles (leave `tile` out)")
        return TilePlan(self.fixed, self._geometry.halo, self._geometry.stride, self.fixed, statistics)

    def record(self, thumb: torch.Tensor) -> NormStats:
        """Statistics of the thumbnail squeezed to the artifact's square input."""
        return NormStats.unpack(torch.from_numpy(self._run_graph(self._square(thumb), None)[1][:2]), self.channels)

    def apply(self, tile: torch.Tensor, stats: NormStats | None, cache: None = None, window: int = 0) -> torch.Tensor:
        return self._run_graph(tile, None if stats is None else stats.packed().numpy())[0]

    def measure(self, tile: torch.Tensor, stats: NormStats, core: Core, index: int, moments: Moments,
                cache: None = None, window: int = 0) -> None:
        """The artifact runs whole (it reports every normalisation; it has no cuts, so no feature cache);
        normalisation ``index``'s moments are kept."""
        reported = self._run_graph(tile, stats.packed().numpy(), core)[1]
        start = sum(self.channels[:index])
        mean, var, count = torch.from_numpy(reported[:, start : start + self.channels[index]])
        moments.add(float(count[0]), mean, var)
