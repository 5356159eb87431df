"""Loading tensors from files that may be hostile or broken: one UserError naming the file, nothing unpickled.

Our own weights are safetensors; foreign ``.pth`` files and training checkpoints go through
``torch.load(..., weights_only=True)``. Neither the models nor the losses are imported here, so both use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from compressor.errors import UserError, one_line, strip_unsafe_advice


def load_weights_only(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``; a file holding code or garbage is one UserError naming it.

    Torch's own message advises re-running with ``weights_only=False``; that advice is dropped.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(path, "no such file", "check the path") from None
    except Exception as exc:
        code = re.search(r"(Unsupported global: GLOBAL [\w.]+|Trying to load unsupported GLOBAL [\w.]+)", str(exc))
        if code:
            what = f"not a weights-only checkpoint: it holds Python objects, never unpickled ({code.group(1)})"
        else:
            what = f"not a torch checkpoint of tensors ({_reason(exc)})"
        raise UserError(path, what, "use a plain state dict of tensors, or .safetensors") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``safetensors.load_file``; a truncated, empty or corrupt file is one UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "no such file", "a model folder holds spec.json + weights.safetensors")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors_rust.SafetensorError, OSError from a short read, ...
        raise UserError(path, f"not a readable safetensors file ({one_line(str(exc))[:160]})",
                        "re-create it; it may be truncated") from None


def _reason(exc: BaseException) -> str:
    """The line of torch's message that says what is wrong, without its advice to load unsafely."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and not line.startswith(
        ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)"))]
    return strip_unsafe_advice(one_line(lines[-1]))[:160] if lines else type(exc).__name__
