"""``styleslim import``: an ONNX style network rebuilt as a native family, verified against ONNX Runtime.

The file's layout picks the family (``onnx_graph.detect_family``); the family
module maps the dequantized tensors (``load_onnx``) and runs the check
(``verify_onnx``) on held-out photos. For the int8 arbitrary graph, whose
activations are quantized too, the check compares with the same graph with
those activation Q/DQ pairs removed, which separates "the rebuild is right"
from "int8 activations add noise" (both numbers are reported).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from compressor.models import arbitrary, multistyle
from compressor.models.onnx_graph import OnnxImportError, detect_family, read_onnx

__all__ = ["OnnxImportError", "import_onnx", "verify_import"]
_FAMILIES = {"multistyle": multistyle, "arbitrary": arbitrary}


def _layout(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    proto = read_onnx(path)
    try:
        return detect_family(proto)
    except OnnxImportError as exc:
        raise OnnxImportError(f"{path}: {exc}") from None


def import_onnx(path: str | Path) -> nn.Module:
    """The ONNX file at ``path`` as a native multistyle or arbitrary network (eval mode, float weights)."""
    path = Path(path)
    return _FAMILIES[_layout(path)].load_onnx(path)


def verify_import(path: str | Path, model: nn.Module, images: list[Path], size: int = 256) -> dict[str, Any]:
    """Per-case PSNR of ``model`` against ONNX Runtime running ``path``; ``min_psnr_db`` over the reference cases."""
    path = Path(path)
    family = _layout(path)
    checked = _FAMILIES[family].verify_onnx(path, model, images, size)
    result = {"family": family, "images": [str(p) for p in images]}
    result |= checked if "cases" in checked else {"cases": checked}
    reference = result.get("reference")
    result["min_psnr_db"] = min(v for k, v in result["cases"].items() if reference is None or k.endswith(reference))
    return result
