"""Run an exported artifact on its own runtime with the torch path's convention: float RGB [0, 1] NCHW in.

``load_runner(path)`` returns a callable taking one NCHW float32 array per
graph input and returning NCHW float32 (a dict by output name when the graph
has several outputs, e.g. VGG19 taps). NHWC artifacts are transposed here, so
callers never see the layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exports.common import ExportError
from exports.manifest import read_manifest

Output = np.ndarray | dict[str, np.ndarray]


class Runner:
    """A loaded artifact: ``runner(*nchw_arrays)``; ``runtime``, ``input_names``, ``output_names`` describe it.

    ``input_shape`` is the graph's (first) input shape in its own layout (strings or None for dynamic dims),
    ``input_shapes`` every input's. A
    batch larger than a fixed batch of 1 runs image by image; a wrong fixed H x W is refused by name.
    """

    def __init__(self, run: Callable[[list[np.ndarray]], list[np.ndarray]], runtime: str, input_names: list[str],
                 output_names: list[str], layout: str, input_shape: list | None = None,
                 input_shapes: list[list] | None = None):
        self._run, self.runtime, self.layout = run, runtime, layout
        self.input_names, self.output_names = input_names, output_names
        self.input_shape = input_shape
        self.input_shapes = input_shapes or [input_shape]

    def __call__(self, *inputs: np.ndarray) -> Output:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.runtime} artifact takes {len(self.input_names)} input(s) {self.input_names}, "
                             f"got {len(inputs)}")
        if self.input_shape is not None:
            batch, hw = self.input_shape[0], self.input_shape[2:] if self.layout == "nchw" else self.input_shape[1:3]
            if all(isinstance(d, int) for d in hw) and tuple(inputs[0].shape[2:]) != tuple(hw):
                got = f"{inputs[0].shape[2]}x{inputs[0].shape[3]}"
                raise ValueError(f"this {self.runtime} artifact takes {hw[0]}x{hw[1]} images (fixed shape), got "
                                 f"{got}: resize, or export with --size / --dynamic")
            if batch == 1 and inputs[0].shape[0] > 1:  # image by image; a 1-D style input goes whole to each
                parts = [self(*(x[i : i + 1] if x.ndim == 4 else x for x in inputs)) for i in range(inputs[0].shape[0])]
                if isinstance(parts[0], dict):
                    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                return np.concatenate(parts)
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        if self.layout == "nhwc":
            arrays = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x for x in arrays]
        outs = self._run(arrays)
        if self.layout == "nhwc":
            outs = [y.transpose(0, 3, 1, 2) for y in outs]
        return outs[0] if len(outs) == 1 else dict(zip(self.output_names, outs))


def is_artifact(path: str | Path) -> bool:
    """An exported artifact (it has a manifest, or a runtime's file type) rather than a model folder or checkpoint."""
    path = Path(path)
    return read_manifest(path) is not None or path.suffix.lower() in (".onnx", ".tflite", ".mlpackage")


def load_runner(path: str | Path, threads: int | None = None) -> Runner:
    """A Runner for a .onnx (ONNX Runtime), .tflite (LiteRT) or, on macOS, .mlpackage (Core ML) artifact."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such artifact")
    manifest = read_manifest(path) or {}
    layout = manifest.get("layout", "nchw")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_runner(path, threads, layout)
    if suffix == ".tflite":
        return _tflite_runner(path, threads, layout, manifest)
    if suffix == ".mlpackage":
        return _coreml_runner(path, layout)
    raise ExportError(f"{path}: unknown artifact type (expected .onnx, .tflite or .mlpackage)")


def _onnx_runner(path: Path, threads: int | None, layout: str) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    shapes = [list(i.shape) for i in session.get_inputs()]
    return Runner(lambda xs: session.run(outputs, dict(zip(inputs, xs))), "onnxruntime", inputs, outputs, layout,
                  shapes[0], shapes)


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


def _tflite_runner(path: Path, threads: int | None, layout: str, manifest: dict) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

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

    shape = [int(d) for d in details[in_keys[0]]["shape"]]
    return Runner(run, "litert", in_names, out_names, layout, shape)


def _coreml_runner(path: Path, layout: str) -> Runner:
    from exports.coreml_export import PREDICTIONS_ON_LINUX, _coremltools, can_predict

    if not can_predict():
        raise ExportError(f"{path}: Core ML predictions {PREDICTIONS_ON_LINUX}")
    ct = _coremltools()
    mlmodel = ct.models.MLModel(str(path))
    spec = mlmodel.get_spec()
    inputs = [f.name for f in spec.description.input]
    outputs = [f.name for f in spec.description.output]

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        result = mlmodel.predict(dict(zip(inputs, xs)))
        return [np.asarray(result[o], dtype=np.float32) for o in outputs]

    return Runner(run, "coreml", inputs, outputs, layout, list(spec.description.input[0].type.multiArrayType.shape))
