"""Exports: every format x family converts, runs on its runtime and matches PyTorch on real images."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from compressor.io import file_sha256
from compressor.models import (
    AdaINNet,
    AdaINSpec,
    STNSpec,
    TransformerNet,
    TransformerNetSpec,
    VGG19LossNet,
    VGG19Spec,
    load_model,
    save_model,
)
from exports import rewrites
from exports.common import ExportError, example_inputs
from exports.manifest import REQUIRED_KEYS, read_manifest
from exports.parity import PARITY_THRESHOLDS_DB
from exports.rewrites import (
    ConcatUpsample2x,
    ExplicitInstanceNorm2d,
    SlicePad2d,
    SpaceToDepthConv2d,
    SubpixelConv2d,
    apply_rewrites,
    space_to_depth_input_conv,
    subpixel_output_conv,
)
from exports.runtime import load_runner
from exports.stage import export_artifact

SIZE = (64, 64)
# A pruned-looking TransformerNet (narrower than the default) with a spatial transformer in front.
PRUNED_STN = TransformerNetSpec(style="starry_night", conv1=16, conv2=32, trunk=64, res_inner=[32] * 5, deconv1=32,
                                deconv2=16, stn=STNSpec())


def _seeded(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.InstanceNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tnet_dir(tmp_path_factory):
    """The pruned spec saved and reloaded as spec.json + weights.safetensors; output spread over ~[0, 1]."""
    model = _seeded(TransformerNet(PRUNED_STN))
    with torch.no_grad():
        model.stn.localization[-1].bias.copy_(torch.tensor([0.9, 0.1, 0.02, -0.05, 0.95, 0.03]))  # a real warp
        model.deconv3.conv2d.weight.mul_(60.0)
        model.deconv3.conv2d.bias.fill_(0.5 * 255)
    return save_model(model, tmp_path_factory.mktemp("tnet") / "model")


@pytest.fixture(scope="module")
def vgg():
    return _seeded(VGG19LossNet(VGG19Spec(widths=[8, 8, 16, 16] + [32] * 12, taps=["relu1_1", "relu2_1", "relu3_1"])))


@pytest.fixture(scope="module")
def adain():
    return _seeded(AdaINNet(AdaINSpec(encoder=[8, 8, 16, 16, 32, 32, 32, 32, 64], decoder=[32] * 4 + [16, 16, 8, 8])))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


def _check(manifest: dict, fmt: str, precision: str) -> None:
    verdict = manifest["parity"]
    assert verdict["passed"] is True, verdict
    assert verdict["psnr_db"] >= PARITY_THRESHOLDS_DB[precision]
    assert [i["image"] for i in verdict["images"]] == ["astronaut.png", "rocket.jpg"]  # the held-out eval images
    low, high = verdict["reference_output_range"]
    assert high - low > 0.1, "reference outputs too flat for parity to mean anything"
    assert manifest["format"] == fmt and manifest["precision"] == precision


# --- rewrites ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [(1, 1, 1, 1), (4, 4, 4, 4), (2, 1, 0, 3)])
def test_slice_pad_is_bit_identical_to_reflection_pad(padding):
    x = torch.randn(2, 5, 11, 13)
    assert torch.equal(SlicePad2d(padding)(x), nn.ReflectionPad2d(padding)(x))


def test_concat_upsample_is_bit_identical_to_nearest():
    x = torch.randn(2, 5, 7, 9)
    assert torch.equal(ConcatUpsample2x()(x), nn.Upsample(scale_factor=2, mode="nearest")(x))


@pytest.mark.parametrize("affine", [True, False])
def test_explicit_instance_norm_matches_within_tolerance_and_refuses_beyond(affine, tnet_dir, monkeypatch):
    norm = nn.InstanceNorm2d(6, affine=affine)
    if affine:
        nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 9, 11) * 5 + 2
    torch.testing.assert_close(ExplicitInstanceNorm2d(norm)(x), norm(x), rtol=1e-5, atol=1e-5)
    model = load_model(tnet_dir)
    rewritten, [record] = apply_rewrites(model, ("explicit_instance_norm",), example_inputs(model, (40, 40)))
    assert record["modules_replaced"] == sum(isinstance(m, nn.InstanceNorm2d) for m in model.modules()) > 0
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in rewritten.modules())
    assert record["max_abs_difference"] < 1e-4
    # Held to bit-exactness, the same rewrite is refused, with the size of the difference named.
    monkeypatch.setitem(rewrites.TOLERANCE, "explicit_instance_norm", 0.0)
    with pytest.raises(ExportError, match="max abs difference"):
        apply_rewrites(model, ("explicit_instance_norm",), example_inputs(model, (40, 40)))


@pytest.mark.parametrize("size", [(20, 20), (19, 26)])
def test_subpixel_output_conv_computes_the_same_conv(size):
    conv = nn.Conv2d(8, 3, 9)
    x = torch.randn(1, 8, *size)
    with torch.no_grad():
        torch.testing.assert_close(SubpixelConv2d(conv)(x), conv(x), rtol=1e-5, atol=1e-5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 3, 9), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 3, padding=1))
    assert subpixel_output_conv(model) == 1  # not the 8-wide, 1x1 or zero-padded convs
    assert isinstance(model[1], SubpixelConv2d) and model[1].weight.shape == (12, 8, 10, 10)


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(6, 2, 2), (12, 4, 4), (4, 2, 0)])
def test_space_to_depth_input_conv_computes_the_same_conv(kernel, stride, padding):
    conv = nn.Conv2d(3, 16, kernel, stride, padding)
    x = torch.randn(2, 3, 8 * stride, 6 * stride)
    with torch.no_grad():
        torch.testing.assert_close(SpaceToDepthConv2d(conv)(x), conv(x), rtol=1e-5, atol=1e-5)
    model = nn.Sequential(nn.Conv2d(3, 8, kernel, stride, padding), nn.Conv2d(8, 8, 4, 2, 2),  # 8 inputs: tiles full
                          nn.Conv2d(3, 3, 3, 2, 1), nn.Conv2d(3, 3, 6, 1, 2))  # kernel not a stride multiple; stride 1
    assert space_to_depth_input_conv(model) == 1
    assert isinstance(model[0], SpaceToDepthConv2d)
    assert model[0].weight.shape == (8, 3 * stride**2, kernel // stride, kernel // stride)


def test_rewrites_keep_whole_models_bit_identical(tnet_dir, adain):
    model = load_model(tnet_dir)
    for net in (model, adain):
        inputs = example_inputs(net, (37, 50))
        rewritten, records = apply_rewrites(net, ("slice_pad", "explicit_grid", "concat_upsample"), inputs)
        assert not any(isinstance(m, (nn.ReflectionPad2d, nn.Upsample)) for m in rewritten.modules())
        assert any(isinstance(m, nn.ReflectionPad2d) for m in net.modules()), "the original must stay untouched"
        assert records[0]["modules_replaced"] > 0 and all(r["bit_identical"] for r in records)
        with torch.no_grad():
            assert torch.equal(net(*inputs), rewritten(*inputs))
    assert records[1]["modules_replaced"] == 0  # AdaIN has no spatial transformer
    assert records[2]["modules_replaced"] == 3  # the AdaIN decoder upsamples three times


# --- ONNX --------------------------------------------------------------------------------------------------------


def test_onnx_transformer_net_from_folder_with_manifest(tnet_dir, out):
    import onnx

    path, manifest = export_artifact(tnet_dir, "onnx", out / "tnet", size=SIZE)
    _check(manifest, "onnx", "fp32")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["stylized"]
    on_disk = read_manifest(path)
    assert set(REQUIRED_KEYS) <= set(on_disk)
    assert on_disk["source"]["weights_sha256"] == file_sha256(tnet_dir / "weights.safetensors")
    assert on_disk["source"]["spec"]["stn"] is not None and on_disk["source"]["spec"]["trunk"] == 64
    assert on_disk["style"] == "starry_night"
    assert on_disk["inputs"][0] == {"name": "image", "shape": [1, 3, 64, 64], "dtype": "float32", "layout": "nchw",
                                    "range": [0.0, 1.0], "color": "RGB"}
    assert {"torch", "onnx", "onnxruntime", "onnxslim"} <= set(on_disk["versions"])
    assert [(r["name"], r["modules_replaced"]) for r in on_disk["rewrites"]] == [("subpixel_output_conv", 1)]


def test_onnx_dynamic_size_and_nhwc(tnet_dir, out):
    model = load_model(tnet_dir)
    path, manifest = export_artifact(model, "onnx", out / "dyn", size=SIZE, layout="nhwc", dynamic=True)
    _check(manifest, "onnx", "fp32")
    assert manifest["inputs"][0]["shape"] == [1, "height", "width", 3]
    x = torch.rand(2, 3, 48, 80)
    got = load_runner(path)(x.numpy())  # the runner takes NCHW and transposes for the NHWC artifact
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-3)  # grid_sample rounding


def test_onnx_vgg_outputs_named_by_tap(vgg, out):
    path, manifest = export_artifact(vgg, "onnx", out / "vgg", size=SIZE)
    _check(manifest, "onnx", "fp32")
    assert [o["name"] for o in manifest["outputs"]] == ["relu1_1", "relu2_1", "relu3_1"]
    runner = load_runner(path)
    got = runner(torch.rand(3, 3, *SIZE).numpy())  # fixed batch of 1: runs image by image
    assert set(got) == {"relu1_1", "relu2_1", "relu3_1"} and got["relu3_1"].shape == (3, 32, 16, 16)
    with pytest.raises(ValueError, match="takes 64x64 images"):
        runner(torch.rand(1, 3, 32, 48).numpy())


def test_onnx_adain_two_inputs(adain, out):
    path, manifest = export_artifact(adain, "onnx", out / "adain", size=SIZE)
    _check(manifest, "onnx", "fp32")
    assert load_runner(path).input_names == ["content", "style"]


# --- TFLite ------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~20-30 s on a shared 2-core machine
def test_tflite_transformer_net_fp32_and_fp16(tnet_dir, out):
    from ai_edge_litert.interpreter import Interpreter

    from exports.backends.litert import fp16_weights

    path, manifest = export_artifact(tnet_dir, "tflite", out / "tnet", size=SIZE)
    _check(manifest, "tflite", "fp32")
    assert [r["name"] for r in manifest["rewrites"]] == ["slice_pad", "concat_upsample", "explicit_instance_norm",
                                                          "subpixel_output_conv", "space_to_depth_input_conv"]
    assert all(r["max_abs_difference"] < 1e-4 for r in manifest["rewrites"])
    ops = [d["op_name"] for d in Interpreter(model_path=str(path))._get_ops_details()]
    assert not set(ops) & {"MIRROR_PAD", "RESIZE_NEAREST_NEIGHBOR"}
    norms = sum(isinstance(m, nn.InstanceNorm2d) for m in load_model(tnet_dir).modules())
    assert ops.count("TRANSPOSE") < norms  # aten.instance_norm is lowered with two per norm
    # The fp16 variant is the same flatbuffer with float16 weights: checked against the fp16 threshold.
    from exports.parity import parity

    half = out / "tnet" / "half.tflite"
    half.write_bytes(fp16_weights(path.read_bytes()))
    assert half.stat().st_size < 0.6 * path.stat().st_size
    verdict = parity(load_model(tnet_dir), load_runner(half), "fp16", SIZE)
    assert verdict["passed"] and verdict["psnr_db"] < manifest["parity"]["psnr_db"]


def test_tflite_vgg_nhwc(vgg, out):
    path, manifest = export_artifact(vgg, "tflite", out / "vgg", size=SIZE, layout="nhwc", precision="fp16")
    _check(manifest, "tflite", "fp16")
    runner = load_runner(path)
    assert runner.output_names == ["relu1_1", "relu2_1", "relu3_1"]


def test_tflite_adain(adain, out):
    _, manifest = export_artifact(adain, "tflite", out / "adain", size=SIZE)
    _check(manifest, "tflite", "fp32")


# --- Core ML -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["tnet", "vgg", "adain"])
def test_coreml_spec(family, tnet_dir, vgg, adain, out):
    model = {"tnet": tnet_dir, "vgg": vgg, "adain": adain}[family]
    precision = "fp32" if family == "vgg" else "fp16"
    path, manifest = export_artifact(model, "coreml", out / family, size=SIZE, precision=precision)
    assert path.is_dir() and path.suffix == ".mlpackage"
    verdict = manifest["parity"]
    structure = verdict["structure"]
    assert structure["weight_dtypes"] == [{"fp16": "FLOAT16", "fp32": "FLOAT32"}[precision]]
    assert "conv" in structure["op_types"]
    assert all(i["shape"] == [1, 3, 64, 64] for i in structure["inputs"])
    if family == "tnet":
        assert manifest["rewrites"][0]["name"] == "explicit_grid" and "resample" in structure["op_types"]
    if sys.platform == "darwin":
        _check(manifest, "coreml", precision)
    else:
        assert verdict["predictions"] == "not run on Linux (coremltools runs them only on macOS)"
        assert verdict["passed"] is None


# --- failures ----------------------------------------------------------------------------------------------------


class _Eig(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eig(x[..., :4, :4])[0].real.sum() + x


class _Broken(TransformerNet):
    """A TransformerNet with a layer no converter can express."""

    def __init__(self):
        super().__init__(TransformerNetSpec(conv1=4, conv2=4, trunk=4, res_inner=[4] * 5, deconv1=4, deconv2=4))
        self.odd = _Eig()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.odd(x))


@pytest.mark.parametrize("fmt, name", [("onnx", "ONNX"), ("coreml", "Core ML")])
def test_broken_conversion_names_the_op_and_leaves_nothing(fmt, name, tmp_path):
    with pytest.raises(ExportError, match=rf"{name} conversion failed at op 'linalg_eig'.* in layer 'model\.odd"):
        export_artifact(_Broken(), fmt, tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_failed_parity_fails_the_cli_with_numbers(tnet_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from styleslim.cli import app

    ok = CliRunner().invoke(app, ["export", str(tnet_dir), "--format", "onnx", "--size", "64", "64", "-o",
                                  str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert "PSNR" in ok.output and (tmp_path / "ok" / "model-fp32.onnx.manifest.json").is_file()
    monkeypatch.setitem(PARITY_THRESHOLDS_DB, "fp32", 500.0)
    bad = CliRunner().invoke(app, ["export", str(tnet_dir), "--format", "onnx", "--size", "64", "64", "-o",
                                   str(tmp_path / "bad")])
    assert bad.exit_code != 0
    assert "parity FAILED" in bad.output and "dB < 500.0 dB" in bad.output
    assert json.loads((tmp_path / "bad" / "model-fp32.onnx.manifest.json").read_text())["parity"]["passed"] is False


def test_export_stage_writes_into_the_run(tnet_dir, tmp_path):
    import shutil
    from types import SimpleNamespace

    from compressor.config import ExportStage
    from styleslim.stages import export_stage

    teacher = shutil.copytree(tnet_dir, tmp_path / "teacher")
    folders = {"export": tmp_path / "exports", "model": teacher, "quantize": tmp_path / "quantized"}
    ctx = SimpleNamespace(recipe=SimpleNamespace(export=ExportStage(formats=["onnx"], size=64), quantize=None),
                          latest_model_dir=lambda: tnet_dir, stage_dir=folders.get)
    export_stage(ctx)
    assert read_manifest(tmp_path / "exports" / "model-fp32.onnx")["parity"]["passed"] is True
    # The teacher is built for the same runtime: the report's speed-up baseline on it.
    baseline = read_manifest(tmp_path / "exports" / "teacher" / "model-fp32.onnx")
    assert baseline["parity"]["passed"] is True and baseline["source"]["model_dir"] == str(teacher)
