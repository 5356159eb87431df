"""Run an exported artifact on its own runtime with the torch path's convention: float RGB [0, 1] NCHW in.

``load_runner(path)`` returns a ``Runner`` (``exports.backends.base``): a callable taking one NCHW float32
array per graph input and returning NCHW float32 (a dict by output name when the graph has several outputs,
e.g. VGG19 taps). The runtime is the one the artifact's manifest names.
"""

from __future__ import annotations

from pathlib import Path

from exports.backends import Runner, backend_for_artifact, get_backend
from exports.common import ExportError
from exports.manifest import read_manifest


def is_artifact(path: str | Path) -> bool:
    """An exported artifact (it has a manifest, or a runtime's file type) rather than a model folder or checkpoint."""
    path = Path(path)
    return backend_for_artifact(path, read_manifest(path)) is not None


def load_runner(path: str | Path, threads: int | None = None, runtime: str | None = None) -> Runner:
    """A Runner for an artifact, on the runtime its manifest names (a foreign file without one: by its suffix),
    or on ``runtime``, another runtime of the same format (``onnxruntime-web`` for an ONNX file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such artifact")
    manifest = read_manifest(path) or {}
    backend = backend_for_artifact(path, manifest)
    if backend is None:
        raise ExportError(f"{path}: unknown artifact type (no manifest, and not a .onnx, .tflite or .mlpackage file)")
    if runtime is not None and runtime != backend.runtime:
        other = get_backend(runtime)
        if other.format != backend.format:
            raise ExportError(f"{path}: a {backend.format} artifact; {runtime} runs {other.format} artifacts")
        backend = other
    if not backend.can_run():
        raise ExportError(f"{path}: {backend.runtime} predictions {backend.cannot_run_note}")
    try:
        return backend.runner(path, threads, manifest.get("layout", "nchw"), manifest)
    except ExportError:
        raise
    except ImportError as exc:
        raise ExportError(f"{path}: {backend.runtime} is not installed ({exc.name or exc}); install it to run "
                          "this artifact") from None
    except Exception as exc:  # garbage, empty or truncated files: each runtime raises its own type
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ExportError(f"{path}: {backend.runtime} cannot load it ({detail}); re-export the artifact") from None
