"""ONNX Runtime quantization of an exported float ONNX model.

- static: ``quantize_static`` in QDQ format, u8 activations + s8 per-channel
  weights (the VNNI fast path on x86; s8s8 has none). InstanceNormalization
  is not in the quantized op list, so it stays float between Q/DQ pairs.
- dynamic: ``quantize_dynamic`` -> ConvInteger, activations quantized at run time.
- weight-only: int8 per-channel weights + DequantizeLinear, float compute (a size win only).
- fp16: float16 weights and compute graph with float32 I/O (``keep_io_types``).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from compressor.io import atomic_output

# What the static recipe quantizes: convs plus the cheap ops between them, so Q/DQ pairs cancel out.
STATIC_OP_TYPES = ["Conv", "Pad", "Resize", "Relu", "Add"]
METHODS = ("minmax", "entropy", "percentile")


def _module_name(node_name: str) -> str:
    """``/model/res1/conv1/conv2d/Conv`` (the exporter's wrapper holds the net as ``model``) -> ``res1.conv1.conv2d``."""
    return node_name.strip("/").rsplit("/", 1)[0].replace("/", ".").removeprefix("model.")


def conv_layers(path: str | Path) -> dict[str, str]:
    """Conv node name -> PyTorch module name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {n.name: _module_name(n.name) for n in graph.node if n.op_type == "Conv"}


class _Reader:
    """Feeds calibration arrays to ORT's calibrator (one dict per image)."""

    def __init__(self, input_name: str, images: list[np.ndarray]):
        self._items = iter([{input_name: x} for x in images])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def quantize_onnx(
    float_onnx: str | Path,
    out_path: str | Path,
    mode: str = "static",
    calibration: list[np.ndarray] | None = None,
    method: str = "minmax",
    keep_float: list[str] | tuple[str, ...] = (),
    only: list[str] | None = None,
) -> Path:
    """Quantize ``float_onnx`` into ``out_path``. ``keep_float``/``only`` are Conv node names.

    ``calibration`` is a list of NCHW float32 arrays (needed by ``static``).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_onnx, out_path = Path(float_onnx), Path(out_path)
    if mode not in ("static", "dynamic", "weight-only", "fp16"):
        raise ValueError(f"ONNX quantization mode {mode!r}: choose static, dynamic, weight-only or fp16")
    with tempfile.TemporaryDirectory() as tmpdir, atomic_output(out_path) as tmp:
        pre = Path(tmpdir) / "pre.onnx"
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        if mode == "static":
            if not calibration:
                raise ValueError("static quantization needs calibration images")
            if method not in METHODS:
                raise ValueError(f"calibration method {method!r}: choose from {', '.join(METHODS)}")
            convs = list(conv_layers(pre))
            quantize_static(
                str(pre), str(tmp), _Reader(_input_name(pre), calibration),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[method],
                op_types_to_quantize=STATIC_OP_TYPES,
                nodes_to_quantize=only if only is not None else [],
                nodes_to_exclude=[n for n in keep_float if n in convs],
                extra_options={"CalibMovingAverage": False},
            )
        elif mode == "dynamic":
            quantize_dynamic(str(pre), str(tmp), per_channel=True, weight_type=QuantType.QUInt8,
                             op_types_to_quantize=["Conv"], nodes_to_exclude=list(keep_float))
        elif mode == "weight-only":
            _weight_only(pre, tmp, set(keep_float))
        else:
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(pre)), keep_io_types=True), str(tmp))
    return out_path


def _weight_only(src: Path, dst: Path, keep_float: set[str]) -> None:
    """Store each Conv weight as per-output-channel symmetric int8 behind a DequantizeLinear."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Conv" and node.name not in keep_float and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            scale = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(axis=1), 1e-12) / 127.0
            q = np.clip(np.round(w / scale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
            base = node.input[1]
            graph.initializer.remove(inits[base])
            graph.initializer.extend([
                numpy_helper.from_array(q, base + "_int8"),
                numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                numpy_helper.from_array(np.zeros(w.shape[0], np.int8), base + "_zero_point"),
            ])
            new_nodes.append(helper.make_node("DequantizeLinear", [base + "_int8", base + "_scale", base + "_zero_point"],
                                              [base], name=base + "_DequantizeLinear", axis=0))
        new_nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def int8_contents(path: str | Path) -> dict:
    """What really runs in int8: conv layers fed by int8 weights (QDQ / ConvInteger) vs float convs, op counts."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    int8_inits = {i.name for i in graph.initializer if numpy_helper.to_array(i).dtype in (np.int8, np.uint8)}
    producers = {o: n for n in graph.node for o in n.output}
    dq_int8 = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8_inits}
    names = conv_layers(path)
    int8_convs, float_convs = [], []
    for node in graph.node:
        if node.op_type in ("Conv", "ConvInteger"):
            weight = node.input[1]
            int8_weight = weight in int8_inits or weight in dq_int8
            data = producers.get(node.input[0])
            int8_data = node.op_type == "ConvInteger" or (data is not None and data.op_type == "DequantizeLinear")
            label = names.get(node.name, _module_name(node.name))
            (int8_convs if int8_weight and int8_data else float_convs).append(label)
    return {
        "int8_compute_convs": int8_convs,
        "float_compute_convs": float_convs,
        "int8_weight_tensors": len(int8_inits),
        "op_counts": dict(Counter(n.op_type for n in graph.node)),
    }
