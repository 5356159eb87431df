"""ONNX export: TorchScript-based torch.onnx exporter, simplified with onnxslim, checked with onnx.checker."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from compressor.io import atomic_output
from exports.common import ExportWrapper, conversion_error, example_inputs

OPSET = 20  # AffineGrid (the STN) needs opset 20


def export_onnx(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] = (256, 256),
    dynamic: bool = False,
    layout: str = "nchw",
    opset: int = OPSET,
) -> Path:
    """Write ``model`` as ONNX (named I/O, optional dynamic H/W); nothing is left behind on failure."""
    import onnx
    import onnxslim

    path = Path(path)
    wrapper = ExportWrapper(model, layout)
    inputs = example_inputs(model, size, layout)
    h, w = (2, 3) if layout == "nchw" else (1, 2)
    images = [n for n, x in zip(wrapper.input_names, inputs) if x.dim() == 4] + wrapper.output_names
    axes = {name: {h: "height", w: "width"} for name in images}
    with atomic_output(path) as tmp:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # Expected noise: fixed shapes in the trace, instance norm's input statistics, slice folding.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", UserWarning)
                torch.onnx.export(
                    wrapper, inputs, str(tmp), input_names=wrapper.input_names, output_names=wrapper.output_names,
                    opset_version=opset, dynamo=False, dynamic_axes=axes if dynamic else None,
                )
        except Exception as exc:
            raise conversion_error("ONNX", wrapper, inputs, exc) from exc
        proto = onnxslim.slim(onnx.load(str(tmp)))
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path
