"""TFLite export through litert-torch, with an fp16-weight variant from ai-edge-quantizer's float casting."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from compressor.io import atomic_output
from exports.common import ExportError, ExportWrapper, conversion_error, example_inputs
from exports.rewrites import apply_rewrites, format_rewrites

# Ops whose constant weights the fp16 variant stores as float16 (computed in float32 after DEQUANTIZE).
FP16_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE")


def export_tflite(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] = (256, 256),
    precision: str = "fp32",
    layout: str = "nchw",
    rewrites: tuple[str, ...] | None = None,
) -> Path:
    """Write ``model`` as a .tflite flatbuffer (fp32, or fp16 weights).

    ``rewrites`` (default: the format's, see ``exports.rewrites.format_rewrites``) are applied first and checked.
    """
    import triton  # noqa: F401  (import before anything that might pull TensorFlow in: TF then triton segfaults)
    import litert_torch

    if precision not in ("fp32", "fp16"):
        raise ExportError(f"TFLite precision {precision!r}: choose fp32 or fp16 (int8 comes from the quantize stage)")
    path = Path(path)
    names = format_rewrites(model, "tflite") if rewrites is None else rewrites
    model, _ = apply_rewrites(model, names, example_inputs(model, size))
    wrapper = ExportWrapper(model, layout)
    inputs = example_inputs(model, size, layout)
    with atomic_output(path) as tmp:
        try:
            edge = litert_torch.convert(wrapper, inputs)
        except Exception as exc:
            raise conversion_error("TFLite", wrapper, inputs, exc) from exc
        edge.export(str(tmp))
        if precision == "fp16":
            tmp.write_bytes(fp16_weights(tmp.read_bytes()))
    return path


def fp16_weights(flatbuffer: bytes) -> bytes:
    """The same model with conv / fully-connected weights stored as float16."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(bytearray(flatbuffer))
    config = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )
    for op in FP16_WEIGHT_OPS:
        q.update_quantization_recipe(
            regex=".*", operation_name=getattr(qtyping.TFLOperationName, op),
            algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING, op_config=config,
        )
    return bytes(q.quantize().quantized_model)
