"""ONNX Runtime Web: the ONNX artifacts in a headless Chromium, on ORT's WASM build (SIMD, threads).

It runs what the ONNX Runtime backend exports and quantizes (the same files, so a report shows what the
browser costs beside the native runtime); the browser side is ``exports.backends.browser``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exports.backends.base import Backend, Runner, register_backend
from exports.backends.browser import missing, web_runner
from exports.backends.onnxruntime import export_onnx

RUNTIME = "onnxruntime-web"


def load(path: Path, threads: int | None, layout: str, manifest: dict[str, Any]) -> Runner:
    return web_runner(RUNTIME, path, threads, layout, manifest)


register_backend(Backend(
    runtime=RUNTIME, format="onnx", suffix=".onnx", packages=("selenium",), default_precision="fp32",
    export=export_onnx, runner=load, can_run=lambda: missing(RUNTIME) is None,
    cannot_run_note="need Chromium and the pinned npm runtimes (make browser web)", quantize_modes=(),
))
