"""What a quantized .tflite file is deployed as (``deployable``): litert-torch's graph made cheaper to run and
smaller, with the same outputs.

``fuse_depth_to_space``: litert-torch lowers every ``pixel_shuffle`` through rank-4 RESHAPE/TRANSPOSE chains
(4 TRANSPOSEs and 3 RESHAPEs per shuffle, because the NCHW shuffle runs inside an NHWC graph). Each such chain
is replaced by one DEPTH_TO_SPACE (plus one TRANSPOSE where the chain ends on an NCHW graph output). TFLite's
DEPTH_TO_SPACE takes its channels in another order than PyTorch's shuffle, so the conv that produces the
shuffled tensor has its output channels (weights, bias, per-channel scales) permuted to match. Which permutation
a chain computes is found by running the chain on an index array, so only chains that really are a
depth-to-space are touched. It is data movement only: int8 outputs are bit-identical, float ones equal to
float rounding (the conv's channels are summed in another tiling). ai-edge-quantizer has no DEPTH_TO_SPACE,
so this runs after quantization.

``strip_tensor_names``: litert-torch names inner tensors by module path, about a third of a small int8 file;
the graph's input and output tensors and the signature keep theirs.
"""

from __future__ import annotations

import copy

import numpy as np

_LAYOUT_OPS = ("RESHAPE", "TRANSPOSE")
# Ops that act on each element alone: a channel permutation before them is one after them.
_ELEMENTWISE = ("LOGISTIC", "RELU", "RELU6", "TANH", "QUANTIZE", "DEQUANTIZE", "HARD_SWISH")
_NUMPY = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


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

    def constant(self, tensor: int) -> np.ndarray:
        t = self.sub.tensors[tensor]
        return np.frombuffer(bytes(self.model.buffers[t.buffer].data), _NUMPY[t.type]).reshape(t.shape)

    def weights_tensor(self, tensor: int) -> int:
        """The constant behind a conv input: itself, or the constant a DEQUANTIZE reads (fp16, weight-only)."""
        op = self.producer.get(tensor)
        return self.sub.operators[op].inputs[0] if op is not None and self.codes[op] == "DEQUANTIZE" else tensor


def _chain(graph: _Graph, start: int) -> list[int]:
    """The run of single-consumer layout ops from op ``start`` on."""
    ops = [start]
    while (nxt := graph.only_consumer(graph.sub.operators[ops[-1]].outputs[0])) is not None \
            and graph.codes[nxt] in _LAYOUT_OPS:
        ops.append(nxt)
    return ops


def _shuffle_permutation(graph: _Graph, ops: list[int]) -> tuple[int, np.ndarray, bool] | None:
    """(block size, channel order, ends in NCHW) when the chain is a depth-to-space of an NHWC tensor, else None.

    The chain is run on an index array; a depth-to-space by ``r`` of channels taken in ``order`` must give
    out[h*r + i, w*r + j, c] = in[h, w, order[(i*r + j)*C' + c]]."""
    sub = graph.sub
    shape = list(sub.tensors[sub.operators[ops[0]].inputs[0]].shape)
    if len(shape) != 4 or shape[0] != 1:
        return None
    _, height, width, channels = shape
    index = np.arange(height * width * channels).reshape(shape)
    for i in ops:
        op = sub.operators[i]
        if graph.codes[i] == "TRANSPOSE":
            index = index.transpose(graph.constant(op.inputs[1]))
        else:
            index = index.reshape(sub.tensors[op.outputs[0]].shape)
    for r in (2, 3, 4):
        out_channels = channels // (r * r)
        if out_channels * r * r != channels:
            continue
        nhwc, nchw = (1, height * r, width * r, out_channels), (1, out_channels, height * r, width * r)
        if index.shape not in (nhwc, nchw):
            continue
        ends_nchw = index.shape == nchw and nhwc != nchw
        src = (index.transpose(0, 2, 3, 1) if ends_nchw else index).reshape(height, r, width, r, out_channels)
        src = src.transpose(0, 2, 1, 3, 4)  # h, w, i, j, c
        rows, cols = np.indices((height, width))
        if not (np.all(src // (width * channels) == rows[..., None, None, None])
                and np.all(src // channels % width == cols[..., None, None, None])):
            continue
        order = src % channels
        if np.all(order == order[:1, :1]):
            return r, order[0, 0].reshape(-1), ends_nchw
    return None


def _permute_producer(graph: _Graph, tensor: int, order: np.ndarray) -> bool:
    """Permute the output channels of the conv that makes ``tensor`` (through elementwise ops); False if none."""
    op = graph.producer.get(tensor)
    while op is not None and graph.codes[op] in _ELEMENTWISE:
        source = graph.sub.operators[op].inputs[0]
        if graph.only_consumer(source) is None:
            return False
        op = graph.producer.get(source)
    if op is None or graph.codes[op] != "CONV_2D" or graph.only_consumer(graph.sub.operators[op].outputs[0]) is None:
        return False
    conv = graph.sub.operators[op]
    constants = [graph.weights_tensor(i) for i in conv.inputs[1:3] if i >= 0]  # weights (O, H, W, I), bias (O)
    buffers = [t.buffer for t in graph.sub.tensors]
    if any(buffers.count(graph.sub.tensors[i].buffer) > 1 or len(graph.consumers.get(i, [])) > 1 for i in constants):
        return False  # shared with another op: permuting it would change that one too
    for index in constants:
        t = graph.sub.tensors[index]
        graph.model.buffers[t.buffer].data = np.frombuffer(graph.constant(index)[order].tobytes(), np.uint8)
        q = t.quantization
        if q is not None and q.scale is not None and len(q.scale) == len(order):
            q.scale = list(np.asarray(q.scale)[order])
            q.zeroPoint = list(np.asarray(q.zeroPoint)[order])
    return True


def _opcode(model, builtin: int, version: int) -> int:
    from ai_edge_litert import schema_py_generated as schema

    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    model.operatorCodes.append(schema.OperatorCodeT())
    code = model.operatorCodes[-1]
    code.builtinCode = code.deprecatedBuiltinCode = builtin
    code.version = version
    return len(model.operatorCodes) - 1


def _replace(graph: _Graph, ops: list[int], r: int, ends_nchw: bool) -> list:
    """The new ops for the chain ``ops``: DEPTH_TO_SPACE [+ the TRANSPOSE to the NCHW tensor the chain ended on]."""
    from ai_edge_litert import schema_py_generated as schema

    model, sub = graph.model, graph.sub
    source, result = sub.operators[ops[0]].inputs[0], sub.operators[ops[-1]].outputs[0]
    int8 = sub.tensors[source].type == schema.TensorType.INT8
    d2s = schema.OperatorT()
    d2s.opcodeIndex = _opcode(model, schema.BuiltinOperator.DEPTH_TO_SPACE, 2 if int8 else 1)
    d2s.builtinOptionsType = schema.BuiltinOptions.DepthToSpaceOptions
    d2s.builtinOptions = schema.DepthToSpaceOptionsT()
    d2s.builtinOptions.blockSize = r
    d2s.inputs, d2s.outputs = [source], [result]
    if not ends_nchw:
        return [d2s]
    _, height, width, channels = sub.tensors[source].shape
    nhwc = copy.deepcopy(sub.tensors[result])
    nhwc.shape, nhwc.shapeSignature, nhwc.name, nhwc.buffer = [1, height * r, width * r, channels // (r * r)], None, None, 0
    sub.tensors.append(nhwc)
    d2s.outputs = [len(sub.tensors) - 1]
    model.buffers.append(schema.BufferT())
    model.buffers[-1].data = np.frombuffer(np.array([0, 3, 1, 2], np.int32).tobytes(), np.uint8)
    perm = schema.TensorT()
    perm.shape, perm.type, perm.buffer, perm.name = [4], schema.TensorType.INT32, len(model.buffers) - 1, None
    sub.tensors.append(perm)
    transpose = schema.OperatorT()
    transpose.opcodeIndex = _opcode(model, schema.BuiltinOperator.TRANSPOSE, 1)
    transpose.builtinOptionsType = schema.BuiltinOptions.TransposeOptions
    transpose.builtinOptions = schema.TransposeOptionsT()
    transpose.inputs, transpose.outputs = [len(sub.tensors) - 2, len(sub.tensors) - 1], [result]
    return [d2s, transpose]


def fuse_depth_to_space(model) -> int:
    """Each pixel-shuffle chain of ``model`` (a flatbuffer ``ModelT``) as one DEPTH_TO_SPACE; returns how many."""
    fused = 0
    for sub in model.subgraphs:
        graph = _Graph(model, sub)
        replaced: dict[int, list] = {}  # first op of a chain -> its new ops
        dropped: set[int] = set()
        for start, code in enumerate(graph.codes):
            producer = graph.producer.get(sub.operators[start].inputs[0])
            if code not in _LAYOUT_OPS or (producer is not None and graph.codes[producer] in _LAYOUT_OPS):
                continue  # not the first op of a chain
            ops = _chain(graph, start)
            found = _shuffle_permutation(graph, ops) if len(ops) > 1 else None
            if found is None or not _permute_producer(graph, sub.operators[start].inputs[0], found[1]):
                continue
            replaced[start] = _replace(graph, ops, found[0], found[2])
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


def deployable(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` as styleslim deploys it: pixel shuffles fused, inner tensor names stripped."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    fuse_depth_to_space(model)
    strip_tensor_names(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
