"""LiteRT quantization of a float .tflite (exported with the slice-padding rewrite) through ai-edge-quantizer.

- static: ``static_wi8_ai8`` with calibration; graph inputs/outputs become int8
  (``exports.runtime.load_runner`` converts at the boundary). InstanceNorm stays float, as in
  ONNX Runtime: one per-tensor int8 scale for the squared deviations of all channels rounds the
  variance of quiet channels to zero. Float norms gave 36.4 dB PSNR vs fp32 instead of 32.8 dB
  (trained TransformerNet, 512 px) at the same speed; XNNPACK runs the float ops delegated.
- dynamic: ``dynamic_wi8_afp32`` (int8 weights, activations quantized per run inside the kernels).
- weight-only: ``weight_only_wi8_afp32`` (int8 weights dequantized to float, float compute).
- fp16: float16 weights, float compute (the exporter's ``fp16_weights``).
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from pathlib import Path

import numpy as np

from compressor.io import atomic_output

MODES = ("static", "dynamic", "weight-only", "fp16")
# Ops of the exported InstanceNorm (exports.rewrites.ExplicitInstanceNorm2d) that static int8 leaves in float.
FLOAT_NORM_OPS = ("MEAN", "SUB", "MUL", "ADD", "RSQRT", "RESHAPE")
NORM_TENSORS = r".*InstanceNorm2d_.*"


def _module_name(tensor_name: str) -> str:
    """litert-torch names op outputs by module stack (``ExportWrapper/..TransformerNet_model/..ResidualBlock_res1/
    ..ConvLayer_conv1/..Conv2d_conv2d;2``, fused ops joined by ``;``): the deepest stack, as ``res1.conv1.conv2d``."""
    stack = max(tensor_name.split(";"), key=lambda part: part.count("/"))
    attrs = [p.rpartition(".")[2].partition("_")[2] for p in stack.split("/")[1:]]
    return ".".join(attrs).removeprefix("model.")


def _ops(interpreter) -> tuple[list[dict], dict[int, dict]]:
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return interpreter._get_ops_details(), tensors


def conv_layers(path: str | Path) -> dict[str, str]:
    """CONV_2D output tensor name -> PyTorch module name."""
    from ai_edge_litert.interpreter import Interpreter

    ops, tensors = _ops(Interpreter(model_path=str(path)))
    return {tensors[o["outputs"][0]]["name"]: _module_name(tensors[o["outputs"][0]]["name"])
            for o in ops if o["op_name"] == "CONV_2D"}


def quantize_tflite(
    float_tflite: str | Path,
    out_path: str | Path,
    mode: str = "static",
    calibration: list[np.ndarray] | None = None,
    keep_float: list[str] | tuple[str, ...] = (),
) -> Path:
    """Quantize ``float_tflite`` into ``out_path``; ``keep_float`` are module-name globs of convs left in float."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    from exports.tflite_export import fp16_weights

    if mode not in MODES:
        raise ValueError(f"TFLite quantization mode {mode!r}: choose from {', '.join(MODES)}")
    float_tflite, out_path = Path(float_tflite), Path(out_path)
    with atomic_output(out_path) as tmp:
        if mode == "fp16":
            tmp.write_bytes(fp16_weights(float_tflite.read_bytes()))
            return out_path
        q = quantizer.Quantizer(str(float_tflite))
        q.load_quantization_recipe({"static": recipe.static_wi8_ai8, "dynamic": recipe.dynamic_wi8_afp32,
                                    "weight-only": recipe.weight_only_wi8_afp32}[mode]())
        for tensor, module in conv_layers(float_tflite).items():
            if any(fnmatch.fnmatchcase(module, g) for g in keep_float):
                q.update_quantization_recipe(regex=re.escape(tensor), operation_name=qtyping.TFLOperationName.CONV_2D,
                                             algorithm_key=quantizer.AlgorithmName.NO_QUANTIZE)
        if mode == "static":
            for op in FLOAT_NORM_OPS:
                q.update_quantization_recipe(regex=NORM_TENSORS, operation_name=getattr(qtyping.TFLOperationName, op),
                                             algorithm_key=quantizer.AlgorithmName.NO_QUANTIZE)
        result = None
        if q.need_calibration:
            if not calibration:
                raise ValueError("static quantization needs calibration images")
            signature, name = _signature_input(float_tflite)
            result = q.calibrate({signature: [{name: x} for x in calibration]})
        tmp.write_bytes(bytes(q.quantize(result).quantized_model))
    return out_path


def _signature_input(path: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]


def int8_contents(path: str | Path) -> dict:
    """Which CONV_2D ops compute in int8 (int8 input and weights) and which stay float; float ops; op counts."""
    from ai_edge_litert.interpreter import Interpreter

    ops, tensors = _ops(Interpreter(model_path=str(path)))
    int8_convs, float_convs = [], []
    for op in ops:
        if op["op_name"] == "CONV_2D":
            data, weight = (tensors[i]["dtype"] for i in op["inputs"][:2])
            name = _module_name(tensors[op["outputs"][0]]["name"])
            (int8_convs if data == np.int8 and weight == np.int8 else float_convs).append(name)
    weights = Counter(np.dtype(t["dtype"]).name for t in tensors.values() if len(t["shape"]) == 4)
    float_ops = Counter(o["op_name"] for o in ops if o["op_name"] not in ("DELEGATE", "QUANTIZE", "DEQUANTIZE")
                        and o["inputs"].size and tensors[o["inputs"][0]]["dtype"] == np.float32)
    return {"int8_compute_convs": int8_convs, "float_compute_convs": float_convs, "float_op_counts": dict(float_ops),
            "rank4_tensor_dtypes": dict(weights), "op_counts": dict(Counter(o["op_name"] for o in ops))}


