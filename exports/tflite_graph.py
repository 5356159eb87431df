"""What a quantized .tflite file is deployed as (``deployable``): litert-torch's graph made cheaper to run and
smaller, with the same outputs.

``fuse_pixel_shuffles``: litert-torch lowers every ``pixel_shuffle`` / ``pixel_unshuffle`` through rank-4
RESHAPE/TRANSPOSE chains (3-4 TRANSPOSEs and 3 RESHAPEs each, because the NCHW shuffle runs inside an NHWC
graph). Each chain becomes one DEPTH_TO_SPACE / SPACE_TO_DEPTH, plus one TRANSPOSE where the chain ends on an
NCHW graph output or starts on an NCHW graph input. TFLite orders the channels of a depth-to-space
differently from PyTorch, so the conv on the channel side of the chain (the one making a shuffled tensor, or
the one reading an unshuffled tensor) has its channels permuted to match: output channels (weights, bias,
per-channel scales), or input channels (weights). Which permutation a chain computes is found by running it on
an index array, so only chains that really are a depth-to-space or space-to-depth are touched. It is data
movement only: int8 outputs are bit-identical, float ones equal to float rounding (a conv's channels are
summed in another tiling). ai-edge-quantizer has no DEPTH_TO_SPACE, so this runs after quantization.

``strip_tensor_names``: litert-torch names inner tensors by module path, about a third of a small int8 file;
the graph's input and output tensors and the signature keep theirs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

_LAYOUT_OPS = ("RESHAPE", "TRANSPOSE")
# Ops that act on each element alone: a channel permutation before them is one after them.
_ELEMENTWISE = ("LOGISTIC", "RELU", "RELU6", "TANH", "QUANTIZE", "DEQUANTIZE", "HARD_SWISH")
_NUMPY = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


class _Graph:
    """One subgraph with op names, producers and consumers resolved."""

    def __init__(self, model, subgraph):
        from ai_edge_litert.tools import flatbuffer_utils

        self.model, self.sub = model, subgraph
        self.codes = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in subgraph.operators]
        self.producer = {t: i for i, op in enumerate(subgraph.operators) for t in op.outputs}
        self.consumers: dict[int, list[int]] = {}
        for i, op in enumerate(subgraph.operators):
            for t in op.inputs:
                self.consumers.setdefault(t, []).append(i)
        self.outputs = set(subgraph.outputs)

    def only_consumer(self, tensor: int) -> int | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def shape(self, tensor: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.sub.tensors[tensor].shape)

    def constant(self, tensor: int) -> np.ndarray:
        t = self.sub.tensors[tensor]
        return np.frombuffer(bytes(self.model.buffers[t.buffer].data), _NUMPY[t.type]).reshape(t.shape)

    def conv_constants(self, op: int) -> list[int] | None:
        """The conv's weights and bias as constant tensors (behind a DEQUANTIZE: fp16, weight-only), or None when
        another op shares one (permuting it would change that op too)."""
        inputs = [t for t in self.sub.operators[op].inputs[1:3] if t >= 0]
        constants = []
        for tensor in inputs:
            producer = self.producer.get(tensor)
            if producer is not None and self.codes[producer] == "DEQUANTIZE":
                tensor = self.sub.operators[producer].inputs[0]
            constants.append(tensor)
        buffers = [t.buffer for t in self.sub.tensors]
        shared = any(len(self.consumers.get(t, [])) > 1 for t in inputs + constants) or \
            any(buffers.count(self.sub.tensors[t].buffer) > 1 for t in constants)
        return None if shared else constants

    def set_constant(self, tensor: int, values: np.ndarray) -> None:
        self.model.buffers[self.sub.tensors[tensor].buffer].data = np.frombuffer(values.tobytes(), np.uint8)


@dataclass
class _Shuffle:
    """A chain found to be a depth-to-space (``up``) or space-to-depth by ``block``; ``channels[k]`` is the TFLite
    channel that PyTorch's channel k becomes; ``nchw``: the chain's far end is NCHW (one TRANSPOSE kept)."""

    up: bool
    block: int
    channels: np.ndarray
    nchw: bool


def _chain(graph: _Graph, start: int) -> list[int]:
    """The run of single-consumer layout ops from op ``start`` on."""
    ops = [start]
    while (nxt := graph.only_consumer(graph.sub.operators[ops[-1]].outputs[0])) is not None \
            and graph.codes[nxt] in _LAYOUT_OPS:
        ops.append(nxt)
    return ops


def _run_chain(graph: _Graph, ops: list[int]) -> np.ndarray:
    """The chain's output, holding for each element the flat index of the input element it comes from."""
    source = graph.sub.operators[ops[0]].inputs[0]
    index = np.arange(int(np.prod(graph.shape(source)))).reshape(graph.shape(source))
    for i in ops:
        op = graph.sub.operators[i]
        if graph.codes[i] == "TRANSPOSE":
            index = index.transpose(graph.constant(op.inputs[1]))
        else:
            index = index.reshape(graph.shape(op.outputs[0]))
    return index


def _pixels(index: np.ndarray, nhwc_shape: tuple[int, ...], nchw: bool) -> tuple[np.ndarray, ...]:
    """Row, column and channel of each flat index into a tensor of ``nhwc_shape`` stored NCHW or NHWC."""
    _, height, width, channels = nhwc_shape
    if nchw:
        return index // width % height, index % width, index // (height * width)
    return index // (width * channels), index // channels % width, index % channels


def _constant_over_pixels(x: np.ndarray) -> bool:
    """Whether ``x`` (rows, columns, ...) holds the same values at every pixel."""
    return bool(np.all(x == x[:1, :1]))


def _as_depth_to_space(out: np.ndarray, shape_in: tuple[int, ...], block: int, nchw: bool) -> _Shuffle | None:
    """``out`` (see ``_run_chain``) as a depth-to-space of an NHWC input to an NHWC (or ``nchw``) output:
    out[h*r + i, w*r + j, c'] = in[h, w, k], with one k per (i, j, c')."""
    _, height, width, channels = shape_in
    up = (1, height * block, width * block, channels // block**2)
    if channels % block**2 or out.shape != ((up[0], up[3], up[1], up[2]) if nchw else up):
        return None
    rows, cols, k = _pixels((out.transpose(_TO_NHWC) if nchw else out)[0], shape_in, nchw=False)
    grid_r, grid_c = np.indices(up[1:3])
    if not (np.all(rows == (grid_r // block)[..., None]) and np.all(cols == (grid_c // block)[..., None])):
        return None
    phases = k.reshape(height, block, width, block, up[3]).transpose(0, 2, 1, 3, 4)
    taken = phases[0, 0].reshape(-1)  # TFLite channel (i*r + j)*C' + c' takes PyTorch's channel taken[.]
    if not _constant_over_pixels(phases) or len(set(taken.tolist())) != channels:
        return None
    return _Shuffle(True, block, np.argsort(taken), nchw)


def _as_space_to_depth(out: np.ndarray, shape_in: tuple[int, ...], block: int, nchw: bool) -> _Shuffle | None:
    """``out`` (see ``_run_chain``) as a space-to-depth of an NHWC (or ``nchw``) input to an NHWC output:
    out[h, w, k] = in[h*r + a, w*r + b, c], with one (a, b, c) per k."""
    nhwc_in = (1, shape_in[2], shape_in[3], shape_in[1]) if nchw else shape_in
    _, height, width, channels = nhwc_in
    if height % block or width % block or out.shape != (1, height // block, width // block, channels * block**2):
        return None
    rows, cols, c = _pixels(out[0], nhwc_in, nchw)
    grid_r, grid_c = np.indices(out.shape[1:3])
    a, b = rows - (grid_r * block)[..., None], cols - (grid_c * block)[..., None]
    if not all(_constant_over_pixels(x) for x in (a, b, c)) or min(a.min(), b.min()) < 0 \
            or max(a.max(), b.max()) >= block:
        return None
    channel = (a[0, 0] * block + b[0, 0]) * channels + c[0, 0]  # the TFLite channel of PyTorch's channel k
    return _Shuffle(False, block, channel, nchw) if len(set(channel.tolist())) == len(channel) else None


def _find_shuffle(graph: _Graph, ops: list[int]) -> _Shuffle | None:
    """What the chain computes, when it is a depth-to-space or a space-to-depth; else None."""
    shape_in = graph.shape(graph.sub.operators[ops[0]].inputs[0])
    if len(shape_in) != 4 or shape_in[0] != 1:
        return None
    out = _run_chain(graph, ops)
    for block in (2, 3, 4):
        for nchw in (False, True):
            found = _as_depth_to_space(out, shape_in, block, nchw) or _as_space_to_depth(out, shape_in, block, nchw)
            if found:
                return found
    return None


def _conv_beside(graph: _Graph, ops: list[int], up: bool) -> int | None:
    """The conv on the channel side of the chain: the one making its input (through elementwise ops), or the one
    reading its output; None when there is none or the tensors between are shared."""
    sub = graph.sub
    if not up:
        op = graph.only_consumer(sub.operators[ops[-1]].outputs[0])
        return op if op is not None and graph.codes[op] == "CONV_2D" and \
            sub.operators[op].inputs[0] == sub.operators[ops[-1]].outputs[0] else None
    op = graph.producer.get(sub.operators[ops[0]].inputs[0])
    while op is not None and graph.codes[op] in _ELEMENTWISE:
        if graph.only_consumer(sub.operators[op].inputs[0]) is None:
            return None
        op = graph.producer.get(sub.operators[op].inputs[0])
    if op is None or graph.codes[op] != "CONV_2D" or graph.only_consumer(sub.operators[op].outputs[0]) is None:
        return None
    return op


def _permute_conv(graph: _Graph, conv: int, shuffle: _Shuffle) -> bool:
    """Permute ``conv``'s output channels (before a depth-to-space) or input channels (after a space-to-depth)
    to TFLite's order; False when its constants are shared."""
    constants = graph.conv_constants(conv)
    if constants is None:
        return False
    order = np.argsort(shuffle.channels)  # TFLite channel t takes PyTorch's order[t]
    for tensor in constants if shuffle.up else constants[:1]:  # weights (O, H, W, I), bias (O)
        graph.set_constant(tensor, np.take(graph.constant(tensor), order, axis=0 if shuffle.up else 3))
        q = graph.sub.tensors[tensor].quantization
        if shuffle.up and q is not None and q.scale is not None and len(q.scale) == len(order):
            q.scale, q.zeroPoint = list(np.asarray(q.scale)[order]), list(np.asarray(q.zeroPoint)[order])
    return True


def _opcode(model, builtin: int, version: int) -> int:
    from ai_edge_litert import schema_py_generated as schema

    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = builtin
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _new_tensor(graph: _Graph, like: int, shape: list[int]) -> int:
    """An activation tensor of ``shape`` with ``like``'s type and quantization."""
    tensor = copy.deepcopy(graph.sub.tensors[like])
    tensor.shape, tensor.shapeSignature, tensor.name, tensor.buffer = shape, None, None, 0
    graph.sub.tensors.append(tensor)
    return len(graph.sub.tensors) - 1


def _transpose(graph: _Graph, source: int, result: int, perm: list[int]):
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.array(perm, np.int32).tobytes(), np.uint8)
    graph.model.buffers.append(buffer)
    constant = schema.TensorT()
    constant.shape, constant.type, constant.buffer = [4], schema.TensorType.INT32, len(graph.model.buffers) - 1
    graph.sub.tensors.append(constant)
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(graph.model, schema.BuiltinOperator.TRANSPOSE, 1)
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.TransposeOptions, schema.TransposeOptionsT()
    op.inputs, op.outputs = [source, len(graph.sub.tensors) - 1], [result]
    return op


def _replacement(graph: _Graph, ops: list[int], shuffle: _Shuffle) -> list:
    """The ops that take the chain's place: [TRANSPOSE to NHWC,] SPACE_TO_DEPTH, or DEPTH_TO_SPACE[, TRANSPOSE
    to NCHW]."""
    from ai_edge_litert import schema_py_generated as schema

    source, result = graph.sub.operators[ops[0]].inputs[0], graph.sub.operators[ops[-1]].outputs[0]
    int8 = graph.sub.tensors[source].type == schema.TensorType.INT8
    builtin, options = ("DEPTH_TO_SPACE", "DepthToSpaceOptions") if shuffle.up else ("SPACE_TO_DEPTH",
                                                                                   "SpaceToDepthOptions")
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(graph.model, getattr(schema.BuiltinOperator, builtin), 2 if int8 else 1)
    op.builtinOptionsType = getattr(schema.BuiltinOptions, options)
    op.builtinOptions = getattr(schema, f"{options}T")()
    op.builtinOptions.blockSize = shuffle.block
    op.inputs, op.outputs = [source], [result]
    if not shuffle.nchw:
        return [op]
    if shuffle.up:  # DEPTH_TO_SPACE into an NHWC tensor, then the TRANSPOSE to the chain's NCHW result
        nhwc = _new_tensor(graph, result, [graph.shape(result)[i] for i in _TO_NHWC])
        op.outputs = [nhwc]
        return [op, _transpose(graph, nhwc, result, _TO_NCHW)]
    nhwc = _new_tensor(graph, source, [graph.shape(source)[i] for i in _TO_NHWC])
    op.inputs = [nhwc]
    return [_transpose(graph, source, nhwc, _TO_NHWC), op]


def fuse_pixel_shuffles(model) -> int:
    """Each pixel (un)shuffle chain of ``model`` (a flatbuffer ``ModelT``) as one DEPTH_TO_SPACE or SPACE_TO_DEPTH
    (see the module docstring); returns how many."""
    fused = 0
    for sub in model.subgraphs:
        graph = _Graph(model, sub)
        replaced: dict[int, list] = {}  # first op of a chain -> the ops taking its place
        dropped: set[int] = set()
        for start, code in enumerate(graph.codes):
            if code not in _LAYOUT_OPS:
                continue
            producer = graph.producer.get(sub.operators[start].inputs[0])
            if producer is not None and graph.codes[producer] in _LAYOUT_OPS:
                continue  # inside a chain, not its first op
            ops = _chain(graph, start)
            shuffle = _find_shuffle(graph, ops) if len(ops) > 1 else None
            conv = _conv_beside(graph, ops, shuffle.up) if shuffle else None
            if conv is None or not _permute_conv(graph, conv, shuffle):
                continue
            replaced[start] = _replacement(graph, ops, shuffle)
            dropped.update(ops)
            fused += 1
        if replaced:
            sub.operators = [new for i, op in enumerate(sub.operators) if i not in dropped or i in replaced
                             for new in replaced.get(i, [op])]
    return fused


def strip_tensor_names(model) -> None:
    """Drop the inner tensor names of ``model`` (a flatbuffer ``ModelT``); graph inputs and outputs keep theirs."""
    for subgraph in model.subgraphs:
        boundary = set(subgraph.inputs) | set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if index not in boundary:
                tensor.name = None


def deployable(flatbuffer: bytes, fuse_shuffles: bool = True) -> bytes:
    """``flatbuffer`` as styleslim deploys it: pixel (un)shuffles fused (``fuse_shuffles``: off only to measure
    what fusing buys), inner tensor names stripped."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    if fuse_shuffles:
        fuse_pixel_shuffles(model)
    strip_tensor_names(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
