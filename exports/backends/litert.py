"""The LiteRT backend: TFLite export through litert-torch, ai-edge-quantizer quantization, the interpreter runner.

Export writes fp32, or fp16 weights through ai-edge-quantizer's float casting.
Quantization of the float .tflite (exported with the slice-padding rewrite):

- static: ``static_wi8_ai8`` with calibration; graph inputs/outputs become int8
  (``exports.runtime.load_runner`` converts at the boundary). InstanceNorm stays float, as in
  ONNX Runtime: one per-tensor int8 scale for the squared deviations of all channels rounds the
  variance of quiet channels to zero (benchmarks/bench_tflite_int8.py).
- dynamic: ``dynamic_wi8_afp32`` (int8 weights, activations quantized per run inside the kernels).
- weight-only: ``weight_only_wi8_afp32`` (int8 weights dequantized to float, float compute).
- fp16: float16 weights, float compute (the exporter's ``fp16_weights``).

Every quantized file is written as deployed (``exports.tflite_graph.deployable``): each pixel shuffle / unshuffle
as one DEPTH_TO_SPACE / SPACE_TO_DEPTH instead of litert-torch's TRANSPOSE/RESHAPE chain, inner tensor names
stripped.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from compressor.data import CalibrationSample, sample_inputs
from compressor.io import atomic_output
from exports.backends.base import Backend, QuantizeJob, Runner, register_backend
from exports.common import ExportError, ExportWrapper, conversion_error, converter_output, example_inputs
from exports.tflite_graph import deployable

# Ops whose constant weights the fp16 variant stores as float16 (computed in float32 after DEQUANTIZE).
FP16_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE")


def export_tflite(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] = (256, 256),
    precision: str = "fp32",
    layout: str = "nchw",
    dynamic: bool = False,
) -> Path:
    """Write ``model`` as a .tflite flatbuffer (fp32, or fp16 weights).

    Deployment rewrites (``exports.rewrites``) are the caller's: the export stage applies the format's.
    """
    import triton  # noqa: F401, I001  (before anything that may pull TensorFlow in: TF, then triton, segfaults)
    with converter_output():  # TensorFlow's and absl's start-up messages
        import litert_torch

    if dynamic:
        raise ExportError("dynamic input size is an ONNX option; tflite artifacts have a fixed shape")
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"TFLite precision {precision!r}: choose fp32 or fp16 (int8 comes from the quantize stage)")
    path = Path(path)
    wrapper = ExportWrapper(model, layout)
    inputs = example_inputs(model, size, layout)
    with atomic_output(path) as tmp:
        try:
            with converter_output():
                edge = litert_torch.convert(wrapper, inputs)
                edge.export(str(tmp))
        except Exception as exc:
            raise conversion_error("TFLite", wrapper, inputs, exc) from exc
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
    with converter_output():
        return bytes(q.quantize().quantized_model)


MODES = ("static", "dynamic", "weight-only", "fp16")
# Ops of the exported instance norms that static int8 leaves in float: TransformerNet's (rewritten as
# exports.rewrites.ExplicitInstanceNorm2d) and the conditional-norm families' own, named by their module class
# (an int8 mean and variance turned the quickstart's LiteRT static int8 from close into different:
# benchmarks/bench_distill_judge.py), and the style weights' products with a conditional norm's tables (int8 there
# cost the 26-style edge student 4.6 dB against its fp32 self: benchmarks/README.md).
FLOAT_NORM_OPS = ("MEAN", "SUB", "MUL", "ADD", "RSQRT", "RESHAPE", "FULLY_CONNECTED")
NORM_MODULES = ("ExplicitInstanceNorm2d", "ConditionalInstanceNorm", "StyleVectorNorm")
NORM_TENSORS = rf".*\.({'|'.join(NORM_MODULES)})_.*"


def _module_name(tensor_name: str) -> str:
    """litert-torch names op outputs by module stack (``ExportWrapper/..TransformerNet_model/..ResidualBlock_res1/
    ..ConvLayer_conv1/..Conv2d_conv2d;2``, fused ops joined by ``;``): the deepest stack, as ``res1.conv1.conv2d``."""
    stack = max(tensor_name.split(";"), key=lambda part: part.count("/"))
    attrs = [p.rpartition(".")[2].partition("_")[2] for p in stack.split("/")[1:]]
    return ".".join(attrs).removeprefix("model.")


Graph = tuple[list[dict], dict[int, dict]]  # a .tflite file's ops and its tensors by index


def _ops(path: str | Path) -> Graph:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return interpreter._get_ops_details(), tensors


def conv_layers(path: str | Path, module_order: list[str] | None = None) -> dict[str, str]:
    """CONV_2D output tensor name -> PyTorch module name.

    litert-torch names ops by their module stack but leaves containers (``nn.ModuleList``) out, so
    ``contract.0.conv`` and ``res.0.0.conv`` can both come out as ``0.conv``, and edge_net's ``down.0.0`` as
    ``0.0``. When parsed names collide or are not the model's, and ``module_order`` (the model's conv names in
    forward order) has one name per CONV_2D, ops are named in execution order instead.
    """
    return _conv_names(_ops(path), module_order, path)


def _conv_names(graph: Graph, module_order: list[str] | None, path: str | Path) -> dict[str, str]:
    ops, tensors = graph
    names = {tensors[o["outputs"][0]]["name"]: _module_name(tensors[o["outputs"][0]]["name"])
             for o in ops if o["op_name"] == "CONV_2D"}
    parsed = set(names.values())
    if module_order and (len(parsed) < len(names) or not parsed <= set(module_order)):
        if len(module_order) != len(names):
            raise ValueError(f"{path}: {len(names)} CONV_2D ops with ambiguous names, the model has "
                             f"{len(module_order)} convs; cannot tell which is which")
        names = dict(zip(names, module_order))
    return names


# The NHWC<->NCHW copies between a conv and the float norms beside it: int8, they would quantize a kept-float
# conv's input and output anyway (the 26-style edge student's float front end: 3.63 perceptual bands with them
# int8, 2.95 float; benchmarks/README.md, stop 42).
LAYOUT_OPS = ("TRANSPOSE", "RESHAPE", "PAD")


def _scope(tensor: str) -> str:
    """ai-edge-quantizer's scope of the op whose one output is ``tensor`` (its output names, each ended by ';')."""
    return f"^{re.escape(tensor)};$"


def layout_copies(path: str | Path, conv_outputs: list[str]) -> list[tuple[str, str]]:
    """(op, output tensor) of the layout copies chained to these convs: back from each one's input and on from its
    output, up to the next op that computes."""
    return _layout_copies(_ops(path), conv_outputs)


def _layout_copies(graph: Graph, conv_outputs: list[str]) -> list[tuple[str, str]]:
    ops, tensors = graph
    producer = {o["outputs"][0]: o for o in ops}
    consumers: dict[int, list[dict]] = {}
    for o in ops:
        for i in o["inputs"]:
            consumers.setdefault(i, []).append(o)
    found: dict[int, str] = {}
    for conv in (o for o in ops if o["op_name"] == "CONV_2D" and tensors[o["outputs"][0]]["name"] in conv_outputs):
        op = producer.get(conv["inputs"][0])
        while op is not None and op["op_name"] in LAYOUT_OPS:
            found[op["outputs"][0]] = op["op_name"]
            op = producer.get(op["inputs"][0])
        frontier = consumers.get(conv["outputs"][0], [])
        while frontier:
            op = frontier.pop()
            if op["op_name"] in LAYOUT_OPS and op["outputs"][0] not in found:
                found[op["outputs"][0]] = op["op_name"]
                frontier += consumers.get(op["outputs"][0], [])
    return [(op, tensors[t]["name"]) for t, op in found.items()]


def quantize_tflite(
    float_tflite: str | Path,
    out_path: str | Path,
    mode: str = "static",
    calibration: list[CalibrationSample] | None = None,
    keep_float: list[str] | tuple[str, ...] = (),
    module_order: list[str] | None = None,
    fuse_shuffles: bool = True,
) -> Path:
    """Quantize ``float_tflite`` into ``out_path`` as deployed (``exports.tflite_graph.deployable``: pixel
    (un)shuffles fused, unless ``fuse_shuffles`` is off to measure what that buys; inner tensor names stripped);
    ``keep_float`` are module-name globs of convs left in float with their layout copies (``module_order``: see
    ``conv_layers``)."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    if mode not in MODES:
        raise ValueError(f"TFLite quantization mode {mode!r}: choose from {', '.join(MODES)}")
    float_tflite, out_path = Path(float_tflite), Path(out_path)
    with atomic_output(out_path) as tmp:
        if mode == "fp16":
            tmp.write_bytes(deployable(fp16_weights(float_tflite.read_bytes()), fuse_shuffles))
            return out_path
        q = quantizer.Quantizer(str(float_tflite))
        q.load_quantization_recipe({"static": recipe.static_wi8_ai8, "dynamic": recipe.dynamic_wi8_afp32,
                                    "weight-only": recipe.weight_only_wi8_afp32}[mode]())
        graph = _ops(float_tflite) if keep_float else ([], {})  # read once for conv names and their copies
        float_convs = [tensor for tensor, module in _conv_names(graph, module_order, float_tflite).items()
                       if any(fnmatch.fnmatchcase(module, g) for g in keep_float)]
        for op, tensor in [("CONV_2D", t) for t in float_convs] + _layout_copies(graph, float_convs):
            q.update_quantization_recipe(regex=_scope(tensor), operation_name=getattr(qtyping.TFLOperationName, op),
                                         algorithm_key=quantizer.AlgorithmName.NO_QUANTIZE)
        if mode == "static":
            for op in FLOAT_NORM_OPS:
                q.update_quantization_recipe(regex=NORM_TENSORS, operation_name=getattr(qtyping.TFLOperationName, op),
                                             algorithm_key=quantizer.AlgorithmName.NO_QUANTIZE)
        result = None
        if q.need_calibration and not calibration:
            raise ValueError("static quantization needs calibration images")
        with converter_output():
            if q.need_calibration:
                signature, names = _signature_inputs(float_tflite)
                result = q.calibrate({signature: [dict(zip(names, sample_inputs(s))) for s in calibration]})
            quantized = bytes(q.quantize(result).quantized_model)
        tmp.write_bytes(deployable(quantized, fuse_shuffles))
    return out_path


def _signature_inputs(path: Path) -> tuple[str, list[str]]:
    """The signature and its input names in graph order (``args_0``, ``args_1``: as ``load`` feeds them)."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    key = next(iter(signatures))
    return key, sorted(signatures[key]["inputs"], key=_index)


def int8_contents(path: str | Path, conv_names: list[str] | None = None) -> dict:
    """Which CONV_2D ops compute in int8 (int8 input and weights) and which stay float; float ops; op counts.

    ``conv_names`` names the convs in execution order (the ``conv_layers`` of the float file a quantized one
    came from: quantization keeps the op order but strips the tensor names)."""
    ops, tensors = _ops(path)
    convs = [op for op in ops if op["op_name"] == "CONV_2D"]
    names = conv_names or [_module_name(tensors[op["outputs"][0]]["name"]) for op in convs]
    if len(names) != len(convs):
        raise ValueError(f"{path}: {len(convs)} CONV_2D ops, {len(names)} conv names given")
    int8_convs, float_convs = [], []
    for op, name in zip(convs, names):
        data, weight = (tensors[i]["dtype"] for i in op["inputs"][:2])
        (int8_convs if data == np.int8 and weight == np.int8 else float_convs).append(name)
    weights = Counter(np.dtype(t["dtype"]).name for t in tensors.values() if len(t["shape"]) == 4)
    float_ops = Counter(o["op_name"] for o in ops if o["op_name"] not in ("DELEGATE", "QUANTIZE", "DEQUANTIZE")
                        and o["inputs"].size and tensors[o["inputs"][0]]["dtype"] == np.float32)
    return {"int8_compute_convs": int8_convs, "float_compute_convs": float_convs, "float_op_counts": dict(float_ops),
            "rank4_tensor_dtypes": dict(weights), "op_counts": dict(Counter(o["op_name"] for o in ops))}


# ---------------------------------------------------------------- runner


def _index(key: str) -> int:
    match = re.search(r"(\d+)$", key)
    return int(match.group(1)) if match else 0


def _quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float to the graph's integer input type (full-integer int8 models have int8 graph inputs)."""
    scale, zero = detail["quantization"]
    if detail["dtype"] == np.float32 or not scale:
        return x
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    return y if y.dtype == np.float32 or not scale else (y.astype(np.float32) - zero) * scale


def load(path: Path, threads: int | None, layout: str, manifest: dict[str, Any]) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    with converter_output():  # "Created TensorFlow Lite XNNPACK delegate" on each load
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
    signature = interpreter.get_signature_runner()
    details, out_details = signature.get_input_details(), signature.get_output_details()
    in_keys = sorted(details, key=_index)
    out_keys = sorted(out_details, key=_index)
    in_names = [i["name"] for i in manifest.get("inputs", [])] or in_keys
    out_names = [o["name"] for o in manifest.get("outputs", [])] or out_keys

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        result = signature(**{k: _quantize_input(x, details[k]) for k, x in zip(in_keys, xs)})
        return [_dequantize_output(result[k], out_details[k]) for k in out_keys]

    shapes = [[int(d) for d in details[k]["shape"]] for k in in_keys]
    return Runner(run, "litert", in_names, out_names, layout, shapes[0], shapes)


# ---------------------------------------------------------------- the quantize stage for this runtime

RUNS_IN_INT8 = {
    "static": "CONV_2D, padding/upsampling copies and residual ADD int8 (int8 graph I/O); InstanceNorm float",
    "dynamic": "CONV_2D with int8 weights, activations quantized per run inside the kernel; rest float",
    "weight-only": "nothing: int8 weights dequantized, float compute",
    "fp16": "nothing: fp16 weights dequantized, float compute",
}


def quantize(job: QuantizeJob) -> list[dict[str, Any]]:
    """Export the float .tflite, quantize it with ``job.mode``, check it on LiteRT, write its manifest."""
    float_path, float_manifest = job.export_float("tflite")
    order = [n for n, m in job.reference.named_modules() if isinstance(m, nn.Conv2d)]
    layers = conv_layers(float_path, order)
    keep = job.keep_float(layers)
    path = job.out_dir / f"model-{job.precision}.tflite"
    quantize_tflite(float_path, path, job.mode, job.calibration, keep_float=keep, module_order=order)
    runner = load(path, None, "nchw", {"outputs": float_manifest["outputs"]})
    info = {**job.extra, "keep_float": keep, "runs_in_int8": RUNS_IN_INT8[job.mode], "contents": int8_contents(path, list(layers.values())),
            "quality": job.judge(runner) if job.judge else None, "rewrites": float_manifest["rewrites"]}
    return [job.write(path, job.precision, info, runner=runner)]


register_backend(Backend(
    runtime="litert", format="tflite", suffix=".tflite",
    packages=("torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert"),
    default_precision="fp32", export=export_tflite, runner=load, quantize=quantize,
))
