"""The runtime-backend registry: one ``Backend`` per runtime, each declared in one module of this package.

A backend is everything styleslim does with one runtime: ``export`` a torch
module to its format, ``runner`` (load an artifact and run it with the torch
path's convention), ``check_structure`` (what can be verified without
running, e.g. Core ML on Linux), ``can_run`` (parity and latency need it),
and ``quantize`` (the runtime's own quantizers, driven through a
``QuantizeJob``). An artifact's runtime comes from its manifest's
``runtime`` field; only a foreign file without a manifest is recognised by
its suffix.

Adding a runtime = one module here ending in ``register_backend(...)`` + one
import line in ``exports/backends/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.data import CalibrationSample

Output = np.ndarray | dict[str, np.ndarray]


class Runner:
    """A loaded artifact: ``runner(*nchw_arrays)``; ``runtime``, ``input_names``, ``output_names`` describe it.

    Takes one NCHW float32 array per graph input and returns NCHW float32 (a dict by output name when the
    graph has several outputs, e.g. VGG19 taps); NHWC artifacts are transposed here, so callers never see the
    layout. ``input_shape`` is the graph's (first) input shape in its own layout (strings or None for dynamic
    dims), ``input_shapes`` every input's. A batch larger than a fixed batch of 1 runs image by image; a wrong
    fixed H x W is refused by name. Inputs that are not 4-D (a style input) pass through as they are.

    ``info`` says what actually ran (a web runtime's provider and threads); ``time_last(n)``, where a runtime
    has it, times ``n`` more runs of the last inputs inside the runtime (a browser page's own clock), in ms.
    """

    def __init__(self, run: Callable[[list[np.ndarray]], list[np.ndarray]], runtime: str, input_names: list[str],
                 output_names: list[str], layout: str, input_shape: list | None = None,
                 input_shapes: list[list] | None = None, info: dict[str, Any] | None = None,
                 time_last: Callable[[int], list[float]] | None = None):
        self._run, self.runtime, self.layout = run, runtime, layout
        self.input_names, self.output_names = input_names, output_names
        self.input_shape = input_shape
        self.input_shapes = input_shapes or [input_shape]
        self.info = info or {}
        self.time_last = time_last

    def __call__(self, *inputs: np.ndarray) -> Output:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.runtime} artifact takes {len(self.input_names)} input(s) {self.input_names}, "
                             f"got {len(inputs)}")
        if self.input_shape is not None:
            batch, hw = self.input_shape[0], self.input_shape[2:] if self.layout == "nchw" else self.input_shape[1:3]
            if all(isinstance(d, int) for d in hw) and tuple(inputs[0].shape[2:]) != tuple(hw):
                got = f"{inputs[0].shape[2]}x{inputs[0].shape[3]}"
                raise ValueError(f"this {self.runtime} artifact takes {hw[0]}x{hw[1]} images (fixed shape), got "
                                 f"{got}: resize, or export with --size / --dynamic")
            if batch == 1 and inputs[0].shape[0] > 1:
                parts = [self(*(x[i : i + 1] if x.ndim == 4 else x for x in inputs)) for i in range(inputs[0].shape[0])]
                if isinstance(parts[0], dict):
                    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                return np.concatenate(parts)
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        if self.layout == "nhwc":
            arrays = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x for x in arrays]
        outs = self._run(arrays)
        if self.layout == "nhwc":
            outs = [y.transpose(0, 3, 1, 2) for y in outs]
        return outs[0] if len(outs) == 1 else dict(zip(self.output_names, outs))


@dataclass
class QuantizeJob:
    """What a backend's ``quantize`` gets: the float model, the settings, and the shared steps it calls back.

    ``export_float(fmt, precision)`` exports the float model (returns artifact path and manifest);
    ``write(path, precision, info, runner=None, verdict=None)`` writes the artifact's manifest with its parity
    verdict (measured on ``runner`` against ``reference`` unless ``verdict`` is given) and returns it;
    ``keep_float(layers)`` resolves the settings' keep-float globs against ``layers`` (node -> module name).
    """

    reference: Any
    out_dir: Path
    settings: Any
    calibration: list[CalibrationSample]
    judge: Callable[[Any], dict[str, float]] | None
    extra: dict[str, Any]
    export_float: Callable[..., tuple[Path, dict[str, Any]]]
    write: Callable[..., dict[str, Any]]
    keep_float: Callable[[dict[str, str]], list[str]]
    precision: str = ""
    mode: str = ""


@dataclass(frozen=True)
class Backend:
    """One runtime (see the module docstring)."""

    runtime: str
    format: str
    suffix: str
    packages: tuple[str, ...]
    default_precision: str
    export: Callable[..., Path]
    runner: Callable[[Path, int | None, str, dict[str, Any]], Runner]
    quantize: Callable[[QuantizeJob], list[dict[str, Any]]] | None = None  # None: runs others' artifacts only
    can_run: Callable[[], bool] = lambda: True
    cannot_run_note: str = ""
    check_structure: Callable[[Path, dict[str, Any], str], dict[str, Any]] | None = None
    dynamic_shapes: bool = False
    # The quantize modes this runtime implements; ``mode_independent``: its variants do not depend on the mode
    # (Core ML's weight compression), so it quantizes once whichever of them are listed.
    quantize_modes: tuple[str, ...] = ("static", "dynamic", "weight-only", "fp16", "qat")
    mode_independent: bool = False


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.runtime] = backend
    return backend


def backends() -> list[Backend]:
    return list(_BACKENDS.values())


def get_backend(runtime: str) -> Backend:
    if runtime not in _BACKENDS:
        raise ValueError(f"unknown runtime {runtime!r}; registered: {', '.join(_BACKENDS)}")
    return _BACKENDS[runtime]


def backend_for_format(fmt: str) -> Backend:
    """The default runtime of an export format (``onnx`` -> ONNX Runtime)."""
    for backend in _BACKENDS.values():
        if backend.format == fmt:
            return backend
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(b.format for b in _BACKENDS.values())}")


def backend_for_artifact(path: Path, manifest: dict[str, Any] | None) -> Backend | None:
    """The runtime named by the artifact's manifest; a foreign file without one, by its suffix."""
    if manifest:
        try:
            if manifest.get("runtime"):
                return get_backend(manifest["runtime"])
            return backend_for_format(manifest["format"])  # manifests written before the runtime field
        except ValueError as exc:
            raise ValueError(f"{path.with_name(path.name + '.manifest.json')}: {exc} (re-export the artifact)") from None
    return next((b for b in _BACKENDS.values() if path.suffix.lower() == b.suffix), None)
