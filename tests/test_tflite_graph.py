"""What quantized .tflite files are deployed as (exports.tflite_graph): pixel shuffles as one DEPTH_TO_SPACE,
unshuffles as one SPACE_TO_DEPTH, same outputs, and chains that are neither left alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from compressor.models import EdgeNet, EdgeNetSpec
from exports.backends.litert import conv_layers, export_tflite, layout_copies, quantize_tflite
from exports.common import example_inputs
from exports.rewrites import apply_rewrites, format_rewrites
from exports.tflite_graph import deployable

SIZE = 64


def op_counts(flatbuffer: bytes) -> Counter:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    return Counter(op["op_name"] for op in interpreter._get_ops_details())


def run(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """The raw graph output (int8 stays int8: bit-level comparisons)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flatbuffer).get_signature_runner()
    [key] = runner.get_input_details()
    detail = runner.get_input_details()[key]
    scale, zero = detail["quantization"]
    if scale:
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(detail["dtype"])
    return next(iter(runner(**{key: x}).values()))


@pytest.fixture(scope="module")
def edge_float(tmp_path_factory):
    """An edge student as the export stage writes it for LiteRT: its stem as an unshuffle of the NCHW graph input
    and a 3x3 conv (the space_to_depth_input_conv rewrite), and two shuffles: a x2 up after its trunk, and the x2
    RGB output (NCHW graph output)."""
    torch.manual_seed(0)
    model = EdgeNet(EdgeNetSpec(unshuffle=2, down=1, stem=16, trunk=16, blocks=1)).eval()
    rewritten, _ = apply_rewrites(model, format_rewrites(model, "tflite"), example_inputs(model, (SIZE, SIZE)))
    path = tmp_path_factory.mktemp("edge") / "model-fp32.tflite"
    export_tflite(rewritten, path, (SIZE, SIZE))
    return model, path


def test_pixel_shuffles_become_depth_and_space_ops_with_the_same_outputs(edge_float):
    model, path = edge_float
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    before = path.read_bytes()
    after = deployable(before)
    ops_before, ops_after = op_counts(before), op_counts(after)
    assert ops_before["TRANSPOSE"] >= 10 and "DEPTH_TO_SPACE" not in ops_before  # litert-torch's lowering
    assert ops_after["DEPTH_TO_SPACE"] == 2 and ops_after["SPACE_TO_DEPTH"] == 1
    # 3 RESHAPEs per chain gone; of the TRANSPOSEs one is left at each NCHW graph end
    assert ops_after["RESHAPE"] == ops_before["RESHAPE"] - 9
    assert ops_after["TRANSPOSE"] == 2
    assert ops_after["CONV_2D"] == ops_before["CONV_2D"]
    np.testing.assert_allclose(run(after, x), run(before, x), atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(run(after, x), model(torch.from_numpy(x)).numpy(), atol=1e-4)


@pytest.mark.parametrize("mode", ["static", "dynamic", "fp16"])
def test_quantized_files_are_fused_and_bit_identical_to_unfused_ones(edge_float, tmp_path, mode):
    _, path = edge_float
    rng = np.random.default_rng(1)
    calibration = [rng.random((1, 3, SIZE, SIZE), dtype=np.float32) for _ in range(2)]
    fused = quantize_tflite(path, tmp_path / "fused.tflite", mode, calibration).read_bytes()
    plain = quantize_tflite(path, tmp_path / "plain.tflite", mode, calibration, fuse_shuffles=False).read_bytes()
    assert op_counts(fused)["DEPTH_TO_SPACE"] == 2 and op_counts(fused)["SPACE_TO_DEPTH"] == 1
    assert "DEPTH_TO_SPACE" not in op_counts(plain)
    x = rng.random((1, 3, SIZE, SIZE), dtype=np.float32)
    if mode == "static":  # int8 all through: a channel permutation of integer convs changes no bit
        np.testing.assert_array_equal(run(fused, x), run(plain, x))
    else:
        np.testing.assert_allclose(run(fused, x), run(plain, x), atol=1e-5)


class _NotAShuffle(nn.Module):
    """Transposes and reshapes that move pixels, but not as a depth-to-space: must stay as they are."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x).transpose(2, 3)  # H <-> W
        n, c, h, w = y.shape
        y = y.reshape(n, c // 4, 4, h, w).transpose(1, 2).reshape(n, c // 4, 4 * h, w)  # channels stacked along H
        return self.b(y)


def test_chains_that_are_not_a_depth_to_space_are_left_alone(tmp_path):
    torch.manual_seed(0)
    model = _NotAShuffle().eval()
    import litert_torch

    litert_torch.convert(model, (torch.rand(1, 3, 16, 16),)).export(str(tmp_path / "m.tflite"))
    before = (tmp_path / "m.tflite").read_bytes()
    after = deployable(before)
    assert "DEPTH_TO_SPACE" not in op_counts(after) and "SPACE_TO_DEPTH" not in op_counts(after)
    assert op_counts(after)["TRANSPOSE"] == op_counts(before)["TRANSPOSE"] > 0
    x = np.random.default_rng(2).random((1, 3, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(run(after, x), run(before, x))


def test_a_kept_float_conv_keeps_its_layout_copies_float(edge_float, tmp_path):
    """Static int8 with the stem kept float: the int8 graph input is dequantized once and reaches it through float
    copies (not int8 copies and a dequantize before the conv), while the next conv still computes in int8."""
    from ai_edge_litert.interpreter import Interpreter

    model, path = edge_float
    order = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    stem = next(t for t, module in conv_layers(path, order).items() if module == "stem.0")
    # the graph input's unshuffle chain before it, the pad before the next conv after it
    assert {op for op, _ in layout_copies(path, [stem])} == {"TRANSPOSE", "RESHAPE", "PAD"}
    rng = np.random.default_rng(2)
    calibration = [rng.random((1, 3, SIZE, SIZE), dtype=np.float32) for _ in range(2)]
    out = quantize_tflite(path, tmp_path / "kept.tflite", "static", calibration, keep_float=["stem.0"],
                          module_order=order)
    interpreter = Interpreter(model_path=str(out))
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    producer = {o["outputs"][0]: o["op_name"] for o in ops}
    first, second = [o for o in ops if o["op_name"] == "CONV_2D"][:2]
    assert dtypes[first["inputs"][1]] == np.float32 and dtypes[second["inputs"][1]] == np.int8
    chain, tensor = [], first["inputs"][0]
    while tensor in producer:
        chain.append(producer[tensor])
        tensor = next(o for o in ops if o["outputs"][0] == tensor)["inputs"][0]
    assert chain[-1] == "DEQUANTIZE" and not {"QUANTIZE", "DEQUANTIZE"} & set(chain[:-1]), chain
