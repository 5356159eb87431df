"""Core ML export: an mlprogram .mlpackage with a fixed input shape, converted from a traced module."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.io import atomic_output
from exports.common import ExportError, ExportWrapper, conversion_error, example_inputs

PREDICTIONS_ON_LINUX = "not run on Linux (coremltools runs them only on macOS)"


def _coremltools():
    try:
        import triton  # noqa: F401  (before coremltools: it may import TensorFlow, and TF then triton segfaults)
    except ImportError:
        pass
    import coremltools

    return coremltools


def export_coreml(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] = (256, 256),
    precision: str = "fp16",
    layout: str = "nchw",
) -> Path:
    """Write ``model`` as an mlprogram .mlpackage (fp16 compute by default, float32 I/O)."""
    ct = _coremltools()
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"Core ML precision {precision!r}: choose fp16 or fp32 (palettization comes from quantize)")
    path = Path(path)
    wrapper = ExportWrapper(model, layout)
    inputs = example_inputs(model, size, layout)
    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace deprecation
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed on purpose
            traced = torch.jit.trace(wrapper, inputs)
            mlmodel = ct.convert(
                traced,
                inputs=[ct.TensorType(name=n, shape=x.shape, dtype=np.float32)
                        for n, x in zip(wrapper.input_names, inputs)],
                outputs=[ct.TensorType(name=n, dtype=np.float32) for n in wrapper.output_names],
                convert_to="mlprogram",
                compute_precision=compute,
                minimum_deployment_target=ct.target.iOS15,
            )
    except Exception as exc:
        raise conversion_error("Core ML", wrapper, inputs, exc) from exc
    with atomic_output(path) as tmp:
        mlmodel.save(str(tmp))
    return path


def inspect_coreml(path: str | Path) -> dict:
    """Inputs, outputs (name, shape, dtype), op types and weight dtypes of a saved .mlpackage."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(path))
    if not spec.HasField("mlProgram"):
        raise ExportError(f"{path}: not an mlprogram")

    def arrays(features) -> list[dict]:
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
        return [{"name": f.name, "shape": list(f.type.multiArrayType.shape),
                 "dtype": dtype(f.type.multiArrayType.dataType)} for f in features]

    tensor_dtype = ct.proto.MIL_pb2.DataType.Name
    ops: set[str] = set()
    weight_dtypes: set[str] = set()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops.add(op.type)
                if op.type == "const":
                    out = op.outputs[0].type
                    if out.HasField("tensorType") and out.tensorType.rank > 1:
                        weight_dtypes.add(tensor_dtype(out.tensorType.dataType))
    return {
        "inputs": arrays(spec.description.input),
        "outputs": arrays(spec.description.output),
        "op_types": sorted(ops),
        "weight_dtypes": sorted(weight_dtypes),
        "spec_version": spec.specificationVersion,
    }


def can_predict() -> bool:
    return sys.platform == "darwin"
