"""What every exporter shares: I/O naming, the layout wrapper, example inputs, clear errors."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from compressor.io import CONVERTER_LOG_ENV
from compressor.models import get_family

LAYOUTS = ("nchw", "nhwc")


def converter_log() -> Path | None:
    """The file converters write into (``$STYLESLIM_CONVERTER_LOG``, default in the temp folder); None: terminal."""
    setting = os.environ.get(CONVERTER_LOG_ENV, str(Path(tempfile.gettempdir()) / "styleslim-logs" / "converters.log"))
    return None if setting == "-" else Path(setting)


@contextmanager
def converter_output() -> Iterator[None]:
    """Send what a converter prints, from Python or C++, to ``converter_log()`` instead of the terminal."""
    log = converter_log()
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "ab") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


class ExportError(RuntimeError):
    """A conversion that failed; the message names the format and, when found, the op and the layer."""


class ParityError(ExportError):
    """An artifact whose outputs drift from the PyTorch model beyond the precision's threshold."""


def io_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Input and output names of the exported graph, as the model's family declares them."""
    try:
        return get_family(model).io_names(model)
    except TypeError as exc:
        raise ExportError(f"cannot export {type(model).__name__}: {exc}") from None


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


def graph_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """One tensor per graph input, from the family's ``example_inputs``: images are 4-D, style inputs 1-D."""
    inputs = get_family(model).example_inputs(model, 8)
    return inputs if isinstance(inputs, tuple) else (inputs,)


def example_inputs(model: nn.Module, size: tuple[int, int], layout: str = "nchw") -> tuple[torch.Tensor, ...]:
    """Deterministic [0, 1] images of the export shape for the image inputs; the family's style inputs as they are."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, 3, *size) if layout == "nchw" else (1, *size, 3)
    return tuple(torch.rand(shape, generator=gen) if x.dim() == 4 else x for x in graph_inputs(model))


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
