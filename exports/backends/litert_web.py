"""LiteRT.js: the TFLite artifacts in a headless Chromium, on LiteRT's WASM build (XNNPACK, threads).

It runs what the LiteRT backend exports and quantizes; the browser side is ``exports.backends.browser``. LiteRT.js
2.5.3 takes float32, int32 and uint8 tensors only, so a full-integer artifact (int8 graph inputs: the
quantize stage's static mode) cannot run here; dynamic int8, weight-only and fp16 artifacts can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exports.backends.base import Backend, Runner, register_backend
from exports.backends.browser import missing, web_runner
from exports.backends.litert import export_tflite
from exports.common import ExportError

RUNTIME = "litert-web"


def load(path: Path, threads: int | None, layout: str, manifest: dict[str, Any]) -> Runner:
    try:
        return web_runner(RUNTIME, path, threads, layout, manifest)
    except ExportError as exc:
        if "INT8 is not supported" in str(exc):
            raise ExportError(f"{path}: LiteRT.js takes no int8 tensors and this full-integer artifact has int8 "
                              "inputs (run it on litert, or its dynamic-int8 variant here)") from None
        raise


register_backend(Backend(
    runtime=RUNTIME, format="tflite", suffix=".tflite", packages=("selenium",), default_precision="fp32",
    export=export_tflite, runner=load, can_run=lambda: missing(RUNTIME) is None,
    cannot_run_note="need Chromium and the pinned npm runtimes (make browser web)", quantize_modes=(),
))
