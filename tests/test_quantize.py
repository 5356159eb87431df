"""Quantization: artifacts really run in int8 on their runtime and keep parity; sensitivity, QAT, data hygiene."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.config import QuantizeStage, TrainConfig
from compressor.data import ContentCrops, load_image, sample_content_paths, sample_style_path
from compressor.distill import train
from compressor.losses import style_grams
from compressor.models import TransformerNet, TransformerNetSpec, load_model, load_vgg19, save_model
from compressor.quantize import (
    QualityProbe,
    QuantizeError,
    calibration_set,
    equalize_norm_inputs,
    image_batch,
    rgb_output_convs,
)
from exports.quantize import QUANT_THRESHOLDS_DB, layer_sensitivity, quantize

SIZE = 64
SPEC = TransformerNetSpec(conv1=8, conv2=16, trunk=32, res_inner=[32] * 5, deconv1=16, deconv2=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny TransformerNet trained for a few steps toward a smooth image-to-image map (its own input).

    Random-init nets output high-frequency noise that no quantizer keeps; a briefly trained net behaves
    like a real style model: outputs are images.
    """
    torch.manual_seed(0)
    model = TransformerNet(SPEC)
    config = TrainConfig(steps=40, batch_size=2, crop=SIZE, lr=3e-3, checkpoint_every=1000)

    def identity(student, batch):
        loss = (student(batch) - batch).abs().mean()
        return {"l1": loss, "total": loss}

    out = tmp_path_factory.mktemp("model")
    train(model, identity, ContentCrops(sample_content_paths("train"), SIZE), config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def judge_parts():
    vgg = load_vgg19("random")
    return vgg, style_grams(vgg, load_image(sample_style_path(), size=SIZE).unsqueeze(0))


def test_calibration_must_not_overlap_eval(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    shutil.copy(sample_content_paths("train")[0], folder / "a.png")
    calibration_set(str(folder), SIZE)  # fine
    shutil.copy(sample_content_paths("eval")[0], folder / "renamed.png")  # same bytes, other name
    with pytest.raises(QuantizeError, match="renamed.png"):
        calibration_set(str(folder), SIZE)


def test_onnx_static_int8_via_cli(model_dir, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from typer.testing import CliRunner

    from styleslim.cli import app

    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["quantize", str(model_dir), "--runtime", "onnx", "--size", str(SIZE),
                                      "--keep-float", "res5.conv2*", "--loss-network", "random", "-o", str(out)])
    assert result.exit_code == 0, result.output
    path = out / "onnx" / "model-int8.onnx"
    manifest = json.loads(Path(str(path) + ".manifest.json").read_text())
    assert manifest["parity"]["passed"], manifest["parity"]
    assert manifest["parity"]["threshold_db"] == QUANT_THRESHOLDS_DB["int8"]
    q = manifest["quantization"]
    assert set(q["contents"]["float_compute_convs"]) == {"res5.conv2.conv2d", "deconv3.conv2d"}
    assert len(q["contents"]["int8_compute_convs"]) == 14
    # The file really holds int8 weights behind DequantizeLinear, and ORT fuses them into QLinearConv.
    graph = onnx.load(str(path)).graph
    int8 = [i for i in graph.initializer if numpy_helper.to_array(i).dtype == np.int8 and i.dims and len(i.dims) == 4]
    assert len(int8) == 14
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == 14


def test_tflite_static_int8(model_dir, judge_parts, tmp_path):
    vgg, grams = judge_parts
    settings = QuantizeStage(runtimes=["tflite"], size=SIZE)
    [manifest] = quantize(model_dir, tmp_path, settings, vgg, grams, progress=False)
    assert manifest["parity"]["passed"], manifest["parity"]
    contents = manifest["quantization"]["contents"]
    assert contents["float_compute_convs"] == ["deconv3.conv2d"]
    assert len(contents["int8_compute_convs"]) == 15
    assert "MIRROR_PAD" not in contents["op_counts"]  # slice padding rewrite carried over
    norms = sum(isinstance(m, torch.nn.InstanceNorm2d) for m in load_model(model_dir).modules())
    assert contents["float_op_counts"]["RSQRT"] == contents["op_counts"]["RSQRT"] == norms  # norms stay float
    assert "CONCATENATION" not in contents["float_op_counts"]  # padding copies stay int8
    # Deployed without litert-torch's module paths (a third of a small int8 file): only the I/O keep names;
    # the deployed form (names stripped, the sub-pixel RGB conv's shuffle fused) keeps the outputs.
    from ai_edge_litert.interpreter import Interpreter

    from exports.tflite_graph import deployable

    names = [t["name"] for t in Interpreter(str(tmp_path / "tflite" / manifest["artifact"])).get_tensor_details()]
    assert sum(bool(n) for n in names) == 2, names
    float_path = tmp_path / "tflite" / "float-equalized-static" / "model-fp32.tflite"
    stripped = deployable(float_path.read_bytes())
    assert len(stripped) < float_path.stat().st_size

    def run(**source) -> np.ndarray:
        runner = Interpreter(**source).get_signature_runner()
        [key] = runner.get_input_details()
        return next(iter(runner(**{key: np.linspace(0, 1, 3 * SIZE * SIZE, dtype=np.float32).reshape(
            runner.get_input_details()[key]["shape"])}).values()))

    np.testing.assert_allclose(run(model_path=str(float_path)), run(model_content=stripped), atol=1e-5)


@pytest.mark.slow  # ~20-30 s each on a shared 2-core machine
@pytest.mark.parametrize("budget_kind", ["grade", "min_psnr_db", "max_style_increase_pct"])
def test_sensitivity_keeps_the_harmful_layer_float(model_dir, judge_parts, tmp_path, budget_kind):
    """A huge bias on one channel of res2.conv1 changes nothing in float (InstanceNorm removes it) but
    stretches that conv's int8 output range so every other channel loses its resolution: the per-layer
    sensitivity ranks it first (by the perceptual judge, PSNR or style loss) and a budget it breaks keeps it
    in float."""
    from exports.stage import export_artifact

    vgg, grams = judge_parts
    model = load_model(model_dir)
    with torch.no_grad():
        model.res2.conv1.conv2d.bias[0] += 5e4
    harmed = save_model(model, tmp_path / "harmed")
    float_onnx, _ = export_artifact(harmed, "onnx", tmp_path / "float", size=(SIZE, SIZE))
    calibration, _ = calibration_set("samples", SIZE)
    by = {"grade": "perceptual", "min_psnr_db": "psnr", "max_style_increase_pct": "style"}[budget_kind]
    ranking = layer_sensitivity(float_onnx, calibration, QualityProbe(model, vgg, grams, SIZE), by=by)
    assert ranking[0]["layer"] == "res2.conv1.conv2d", ranking[:3]
    assert ranking[0]["psnr_db"] < ranking[1]["psnr_db"]
    assert ranking[0]["perceptual_bands"] > max(1.0, ranking[1]["perceptual_bands"])
    assert ranking[0]["grade"] == "different"
    budget = {"grade": "close", "min_psnr_db": (ranking[0]["psnr_db"] + ranking[1]["psnr_db"]) / 2,
              "max_style_increase_pct": ranking[0]["style_increase_pct"] / 2}[budget_kind]
    settings = QuantizeStage(size=SIZE, **{budget_kind: budget})
    [manifest] = quantize(harmed, tmp_path / "q", settings, vgg, grams, progress=False)
    quantization = manifest["quantization"]
    assert "res2.conv1.conv2d" in quantization["contents"]["float_compute_convs"], quantization["mixed_precision"]
    assert quantization["mixed_precision"]["ranked_by"] == by and quantization["mixed_precision"]["met"] is True
    quality = quantization["quality"]
    if budget_kind == "grade":
        assert quality["grade"] in ("indistinguishable", "close")
    elif budget_kind == "min_psnr_db":
        assert quality["psnr_db"] >= budget
    else:
        assert quality["style_increase_pct"] <= budget


def test_dynamic_int8_keeps_float_only_what_its_budget_needs(model_dir, judge_parts, tmp_path):
    """One channel held at 1e4 into res2.conv2, whose weights ignore that channel: nothing changes in float, but
    dynamic int8 quantizes the conv's whole input with one per-run scale, so every other channel rounds to zero.
    Ranked in dynamic mode, that conv comes first, and a *close* budget keeps it float and no more."""
    vgg, grams = judge_parts
    model = load_model(model_dir)
    with torch.no_grad():
        model.res2.in1.bias[0] = 1e4
        model.res2.conv2.conv2d.weight[:, 0] = 0
    harmed = save_model(model, tmp_path / "harmed")
    settings = QuantizeStage(size=SIZE, modes=["dynamic"], grade="close")
    [manifest] = quantize(harmed, tmp_path / "q", settings, vgg, grams, progress=False)
    quantization = manifest["quantization"]
    mixed = quantization["mixed_precision"]
    assert mixed["ranked_as"] == "dynamic" and mixed["met"] is True
    assert mixed["ranking"][0]["layer"] == "res2.conv2.conv2d", mixed["ranking"][:3]
    assert mixed["trail"][0]["grade"] == "different"  # every conv int8, the RGB output's aside
    assert quantization["keep_float"] == sorted(["res2.conv2.conv2d", *rgb_output_convs(model)])
    assert "res2.conv2.conv2d" in quantization["contents"]["float_compute_convs"]
    assert quantization["quality"]["grade"] in ("indistinguishable", "close")


def test_keep_float_per_mode_keeps_each_modes_own_convs_float(model_dir, tmp_path, caplog):
    """Static int8 can need convs float that dynamic int8 does not, so a recipe may name them per mode; a list for
    a mode the run does not make is said to be unused."""
    settings = QuantizeStage(size=SIZE, modes=["static", "dynamic"],
                             keep_float={"static": ["res5.conv2*"], "qat": ["res1.*"]})
    with caplog.at_level(logging.WARNING):
        manifests = {m["quantization"]["mode"]: m["quantization"] for m in quantize(model_dir, tmp_path, settings,
                                                                                      progress=False)}
    assert "keep_float names qat, which quantize.modes (static, dynamic) does not make" in caplog.text
    rgb = rgb_output_convs(load_model(model_dir))
    assert manifests["static"]["keep_float"] == sorted(["res5.conv2.conv2d", *rgb])
    assert manifests["dynamic"]["keep_float"] == rgb
    assert "res5.conv2.conv2d" in manifests["static"]["contents"]["float_compute_convs"]
    assert "res5.conv2.conv2d" not in manifests["dynamic"]["contents"]["float_compute_convs"]


def test_quality_is_judged_on_the_images_given_never_on_evaluation_photos(model_dir, tmp_path):
    """A budget is as strict as its photos: quantize.images replaces the bundled validation pair, and a folder
    holding a held-out photo is refused (the report grades on those)."""
    folder = tmp_path / "like-mine"
    folder.mkdir()
    shutil.copy(sample_content_paths("train")[0], folder / "mine.png")
    settings = QuantizeStage(size=SIZE, modes=["dynamic"], images=str(folder), grade="close")
    [manifest] = quantize(model_dir, tmp_path / "q", settings, progress=False)
    assert manifest["quantization"]["quality_images"] == [str(folder / "mine.png")]
    assert manifest["quantization"]["mixed_precision"]["met"] is True
    shutil.copy(sample_content_paths("eval")[0], folder / "held-out.png")
    with pytest.raises(QuantizeError, match="held-out.png is both a quality image and an evaluation image"):
        quantize(model_dir, tmp_path / "r", settings, progress=False)


def test_a_budget_grades_against_the_teacher_when_given(model_dir, tmp_path, caplog):
    """In a run a budget means the run's bar: int8 pictures graded against the teacher's. A student far from its
    teacher (a random net: noise) misses *close* in float already: that is said, and no conv is kept float for a
    budget none could meet; against itself it needs none float. From Python (``teacher=``) and from the CLI
    (``--teacher``, refused without a budget)."""
    from typer.testing import CliRunner

    import styleslim
    from styleslim.cli import app

    student = load_model(model_dir)
    torch.manual_seed(1)
    stranger = save_model(TransformerNet(SPEC).eval(), tmp_path / "stranger")
    own = styleslim.quantize(student, "onnx", out=tmp_path / "own", mode="dynamic", size=SIZE, grade="close")
    command = ["quantize", str(model_dir), "--teacher", str(stranger), "--mode", "dynamic", "--size", str(SIZE),
               "-o", str(tmp_path / "teacher")]
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 2 and refused.output.startswith("error: --teacher: only a budget"), refused.output
    with caplog.at_level(logging.WARNING, logger="exports.quantize"):
        result = CliRunner().invoke(app, [*command, "--grade", "close"])
    assert result.exit_code == 0, result.output
    versus = json.loads((tmp_path / "teacher" / "onnx" / "model-int8-dynamic.onnx.manifest.json").read_text())
    own_mixed, versus_mixed = own.manifest["quantization"]["mixed_precision"], versus["quantization"]["mixed_precision"]
    assert own_mixed["judged_against"] == "float model" and own_mixed["met"] is True
    assert own_mixed["float_model"]["grade"] == "indistinguishable" and own_mixed["trail"]
    assert own.manifest["quantization"]["keep_float"] == rgb_output_convs(student)
    assert versus_mixed["judged_against"] == "teacher" and versus_mixed["met"] is False
    assert versus_mixed["float_model"]["grade"] == "different" and versus_mixed["ranking"] == []
    assert versus["quantization"]["keep_float"] == rgb_output_convs(student)
    assert "the float model itself misses the budget (grade different" in caplog.text
    assert not [p.name for p in (tmp_path / "teacher").iterdir() if p.name.startswith(".")]  # working files gone


def test_an_unreachable_budget_is_said_not_hidden(model_dir, judge_parts, tmp_path, caplog):
    """Every conv float still leaves int8 activations, adds and padding: a budget they break is reported unmet."""
    vgg, grams = judge_parts
    with caplog.at_level(logging.WARNING, logger="exports.quantize"):
        [manifest] = quantize(model_dir, tmp_path, QuantizeStage(size=SIZE, min_psnr_db=80.0), vgg, grams,
                              progress=False)
    mixed = manifest["quantization"]["mixed_precision"]
    assert mixed["met"] is False and manifest["quantization"]["quality"]["psnr_db"] < 80.0 <= mixed["float_model"]["psnr_db"]
    assert "budget is not met even with every conv float" in caplog.text


def test_static_int8_keeps_conditional_norms_float(judge_parts, tmp_path):
    """The multi-style network's own instance norms (one style kept, as the quickstart's), their scale and shift
    included, stay float like TransformerNet's on both runtimes: int8 there costs more than any conv."""
    import onnx

    from compressor.models import MultiStyleNet, MultiStyleSpec
    from compressor.models.conditional_norm import ConditionalInstanceNorm
    from exports.backends.onnxruntime import norm_affine_nodes

    vgg, grams = judge_parts
    torch.manual_seed(0)
    model = MultiStyleNet(MultiStyleSpec(n_styles=1, contract=[8, 8, 16], res_inner=[16] * 2, expand=[8, 4])).eval()
    with torch.no_grad():  # a trained network's scales and shifts (1 and 0 would be folded away at export)
        for name, param in model.named_parameters():
            if name.endswith(("gamma", "beta")):
                param.uniform_(0.5, 1.5) if name.endswith("gamma") else param.uniform_(-0.3, 0.3)
    folder = save_model(model, tmp_path / "multistyle")
    settings = QuantizeStage(runtimes=["onnx", "tflite"], size=SIZE)
    onnx_manifest, tflite_manifest = quantize(folder, tmp_path / "q", settings, vgg, grams, progress=False)
    norms = sum(isinstance(m, ConditionalInstanceNorm) for m in model.modules())
    contents = tflite_manifest["quantization"]["contents"]
    assert contents["float_op_counts"].get("RSQRT") == contents["op_counts"]["RSQRT"] == norms, contents
    assert contents["float_op_counts"].get("MEAN") == contents["op_counts"]["MEAN"], contents
    tail = norm_affine_nodes(tmp_path / "q" / "onnx" / "float-equalized-static" / "model-fp32.onnx")
    assert len(tail) == 2 * norms  # each norm's Mul (gamma) and Add (beta)
    graph = onnx.load(str(tmp_path / "q" / "onnx" / onnx_manifest["artifact"])).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    in_int8 = [n.name for n in graph.node if n.name in tail and any(producer.get(i) == "DequantizeLinear"
                                                                    for i in n.input)]  # QDQ: int8 inputs
    assert in_int8 == [], in_int8


def test_several_modes_make_one_variant_each(model_dir, judge_parts, tmp_path):
    """static and dynamic side by side per runtime; Core ML's weight compression runs once, whatever the modes."""
    vgg, grams = judge_parts
    settings = QuantizeStage(runtimes=["onnx", "coreml"], modes=["static", "dynamic"], size=SIZE,
                             coreml_palettize_bits=[])
    manifests = quantize(model_dir, tmp_path, settings, vgg, grams, progress=False)
    assert [(m["format"], m["precision"]) for m in manifests] == [
        ("onnx", "int8"), ("onnx", "int8-dynamic"), ("coreml", "int8-weight-only")]
    assert [m["quantization"]["mode"] for m in manifests] == ["static", "dynamic", "static"]
    # static int8 was calibrated from the equalized weights: its float artifact is kept apart from the plain one
    assert manifests[0]["quantization"]["equalized_norm_inputs"]
    assert "equalized_norm_inputs" not in manifests[2]["quantization"]  # Core ML compresses the weights as they are
    plain, equalized = (tmp_path / "onnx" / d / "model-fp32.onnx" for d in ("float", "float-equalized-static"))
    assert plain.is_file() and equalized.is_file() and plain.read_bytes() != equalized.read_bytes()
    ops = {m["precision"]: m["quantization"]["contents"]["op_counts"] for m in manifests[:2]}
    assert "ConvInteger" in ops["int8-dynamic"] and "ConvInteger" not in ops["int8"]
    with pytest.raises(QuantizeError, match="quantize.modes: coreml"):
        quantize(model_dir, tmp_path / "x", QuantizeStage(runtimes=["coreml"], modes=["dynamic"], size=SIZE),
                 vgg, grams, progress=False)


@pytest.mark.parametrize("reduce_range", [None, True, False])
def test_onnx_static_weight_bits_follow_the_machine_or_the_recipe(model_dir, judge_parts, tmp_path, reduce_range):
    """ORT's x86 u8s8 kernels without VNNI saturate: there (reduce_range None) the int8 weights get 7 bits."""
    import onnx
    from onnx import numpy_helper

    from exports.backends.onnxruntime import u8s8_saturates

    vgg, grams = judge_parts
    settings = QuantizeStage(size=SIZE, onnx_reduce_range=reduce_range)
    [manifest] = quantize(model_dir, tmp_path, settings, vgg, grams, progress=False)
    seven_bits = u8s8_saturates() if reduce_range is None else reduce_range
    assert manifest["quantization"]["weight_bits"] == (7 if seven_bits else 8)
    graph = onnx.load(str(tmp_path / "onnx" / manifest["artifact"])).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert weights, "static int8 stores its conv weights as int8"
    peak = max(int(np.abs(w.astype(np.int32)).max()) for w in weights.values())
    assert peak <= 64 if seven_bits else peak > 64, peak


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_onnx_clipping_calibration_narrows_activation_ranges(model_dir, judge_parts, tmp_path, method):
    """Entropy and percentile calibration clip activation outliers that min-max keeps: every activation's int8
    step is at most min-max's, some are finer (ORT's own entropy defaults leave min-max's range)."""
    import onnx
    from onnx import numpy_helper

    vgg, grams = judge_parts

    def steps(calibration_method: str) -> dict[str, float]:
        settings = QuantizeStage(size=SIZE, calibration_method=calibration_method)
        [manifest] = quantize(model_dir, tmp_path / calibration_method, settings, vgg, grams, progress=False)
        assert manifest["quantization"]["calibration_method"] == calibration_method
        graph = onnx.load(str(tmp_path / calibration_method / "onnx" / manifest["artifact"])).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}

    minmax, clipped = steps("minmax"), steps(method)
    assert clipped.keys() == minmax.keys()
    ratios = [clipped[name] / minmax[name] for name in minmax]
    assert max(ratios) <= 1 + 1e-6 and min(ratios) < 0.99, ratios


def _skewed_multistyle() -> torch.nn.Module:
    """A small single-style multistyle net whose pre-norm channels differ 100x in spread (the norms undo it)."""
    from compressor.models.multistyle import MultiStyleNet, MultiStyleSpec

    torch.manual_seed(0)
    model = MultiStyleNet(MultiStyleSpec(n_styles=1, contract=[8, 16, 16], res_inner=[16, 16], expand=[8, 8])).eval()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d) and m.out_channels > 3:
                m.weight.mul_(torch.logspace(1, 3, m.out_channels).view(-1, 1, 1, 1))
    return model


def test_norm_input_equalization_is_exact_and_evens_out_channels():
    model = _skewed_multistyle()
    calibration, _ = calibration_set(None, SIZE)
    equalized, convs = equalize_norm_inputs(model, calibration)
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())  # each feeds a norm
    x = torch.from_numpy(calibration[0])
    spreads = []
    equalized.contract[1].conv.register_forward_hook(lambda m, i, out: spreads.append(out.std((0, 2, 3))))
    with torch.no_grad():
        torch.testing.assert_close(equalized(x), model(x), atol=1e-4, rtol=0)
    assert spreads[0].max() / spreads[0].min() < 3, spreads  # was 100 before


def test_norm_input_equalization_rescues_static_int8(tmp_path):
    """Quiet channels lose their int8 steps before a norm; equalized, the same graph quantizes faithfully."""
    import onnxruntime as ort

    from exports.backends.onnxruntime import export_onnx, quantize_onnx

    model = _skewed_multistyle()
    calibration, _ = calibration_set(None, SIZE)
    images = [x.numpy() for x in image_batch(sample_content_paths("eval"), SIZE)]
    with torch.no_grad():
        reference = [model(torch.from_numpy(x)).numpy() for x in images]

    def int8_psnr(net: torch.nn.Module, name: str) -> float:
        path = quantize_onnx(export_onnx(net, tmp_path / f"{name}.onnx", (SIZE, SIZE)), tmp_path / f"{name}-q.onnx",
                             "static", calibration)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = [session.run(None, {session.get_inputs()[0].name: x})[0] for x in images]
        return min(10 * np.log10(1 / np.mean((y - r) ** 2)) for y, r in zip(outputs, reference))

    plain, equalized = int8_psnr(model, "plain"), int8_psnr(equalize_norm_inputs(model, calibration)[0], "equalized")
    assert equalized > plain + 6, (plain, equalized)


def test_keep_float_glob_must_match(model_dir, judge_parts, tmp_path):
    vgg, grams = judge_parts
    with pytest.raises(QuantizeError, match="no_such_layer"):
        quantize(model_dir, tmp_path, QuantizeStage(size=SIZE, keep_float=["no_such_layer"]), vgg, grams)


@pytest.fixture(scope="module")
def raw_model_dir(tmp_path_factory) -> Path:
    """A random-init tiny TransformerNet scaled so its output spans an image's range: PTQ loses several dB on it."""
    torch.manual_seed(0)
    model = TransformerNet(SPEC).eval()
    x = load_image(sample_style_path(), size=96).unsqueeze(0)
    with torch.no_grad():
        model.deconv3.conv2d.weight.mul_(0.2 / float(model(x).std()))
        model.deconv3.conv2d.bias.add_(255 * (0.5 - float(model(x).mean())))
    return save_model(model, tmp_path_factory.mktemp("raw"))


def test_qat_end_to_end_is_graded_beside_ptq_and_deploys_as_int8(raw_model_dir, judge_parts, tmp_path):
    """QAT (torchao PT2E fake quant, teacher = fp32) and PTQ in the same PT2E x86 int8 scheme, both graded by the
    perceptual judge against the fp32 model on the validation photos; the QAT-trained weights then go through ORT's
    static quantizer into a real int8 artifact that must keep parity. (Whether QAT pays is the report's to say: on
    this random net it does not beat PTQ on held-out photos.)"""
    vgg, grams = judge_parts
    # a partial qat block: the keys given replace QAT's defaults (the loss weights among them stay QAT's)
    settings = QuantizeStage(runtimes=["onnx"], modes=["qat"], size=SIZE,
                             qat={"steps": 60, "crop": SIZE, "checkpoint_every": 1000})
    [manifest] = quantize(raw_model_dir, tmp_path, settings, vgg, grams, progress=False)
    qat = manifest["quantization"]["qat"]
    for quality in (qat["pt2e_qat_int8_quality"], qat["pt2e_ptq_int8_quality"]):
        assert quality["grade"] in ("indistinguishable", "close"), qat
        assert 0 < quality["perceptual_bands"] < 5 and 20 < quality["psnr_db"] < 60, qat
    assert manifest["precision"] == "int8-qat" and manifest["parity"]["passed"], manifest["parity"]
    assert manifest["quantization"]["quality"]["grade"] in ("indistinguishable", "close")
    assert (tmp_path / "qat" / "spec.json").is_file()


def test_coreml_weight_compression_shows_in_the_spec(model_dir, judge_parts, tmp_path):
    """Linux cannot run Core ML predictions: the spec must show int8 weights / a 64-entry LUT, and the size drop."""
    vgg, grams = judge_parts
    settings = QuantizeStage(runtimes=["coreml"], modes=["weight-only"], size=SIZE, coreml_palettize_bits=[6])
    manifests = quantize(model_dir, tmp_path, settings, vgg, grams, progress=False)
    assert [m["precision"] for m in manifests] == ["int8-weight-only", "palettized-6bit"]
    for manifest, kind in zip(manifests, ["INT8 data", "64-entry LUT"]):
        structure = manifest["parity"]["structure"]
        assert structure["compressed_weights"].get(kind, 0) >= 12, structure["compressed_weights"]
        assert structure["size_bytes"] < 0.75 * structure["float_size_bytes"]


def test_qat_of_an_edge_student_deploys_as_int8_on_both_runtimes(judge_parts, tmp_path):
    """An int8-built student (edge_net: a strided space-to-depth stem, norm blocks, pixel-shuffle up and out) goes
    through QAT and both runtimes' static int8: every artifact passes parity, its convs compute in int8, and the
    LiteRT file runs the shuffles as DEPTH_TO_SPACE / SPACE_TO_DEPTH."""
    from compressor.models import EdgeNet, EdgeNetSpec

    torch.manual_seed(0)
    student = EdgeNet(EdgeNetSpec(unshuffle=2, down=1, stem=16, trunk=16, blocks=2, block="norm", norm="instance"))
    config = TrainConfig(steps=30, batch_size=2, crop=SIZE, lr=3e-3, checkpoint_every=1000)

    def identity(model, batch):
        loss = (model(batch) - batch).abs().mean()
        return {"l1": loss, "total": loss}

    train(student, identity, ContentCrops(sample_content_paths("train"), SIZE), config, tmp_path / "student",
          progress=False)
    vgg, grams = judge_parts
    settings = QuantizeStage(runtimes=["onnx", "tflite"], modes=["static", "qat"], size=SIZE,
                             qat={"steps": 6, "crop": SIZE, "checkpoint_every": 1000})
    manifests = quantize(tmp_path / "student", tmp_path / "q", settings, vgg, grams, progress=False)
    assert sorted((m["runtime"], m["precision"]) for m in manifests) == [
        ("litert", "int8"), ("litert", "int8-qat"), ("onnxruntime", "int8"), ("onnxruntime", "int8-qat")]
    for manifest in manifests:
        assert manifest["parity"]["passed"], (manifest["runtime"], manifest["precision"], manifest["parity"])
    for manifest in (m for m in manifests if m["runtime"] == "litert"):
        contents = manifest["quantization"]["contents"]
        assert not contents["float_compute_convs"] and len(contents["int8_compute_convs"]) == 8
        assert contents["op_counts"]["DEPTH_TO_SPACE"] == 2 and contents["op_counts"]["SPACE_TO_DEPTH"] == 1


def test_a_multi_style_student_quantizes_with_its_style_input(judge_parts, tmp_path):
    """Style weights in, like multistyle26.onnx: calibrated on every style, int8 convs on both runtimes, and the
    artifact still paints each style as the float model does."""
    from compressor.models import create_model
    from compressor.models.conditional_norm import parse_style_weights
    from compressor.quantize import calibration_samples
    from exports.runtime import load_runner

    vgg, grams = judge_parts
    torch.manual_seed(0)
    model = create_model({"family": "edge_net", "unshuffle": 2, "down": 1, "stem": 16, "trunk": 16, "blocks": 1,
                          "block": "norm", "norm": "instance", "n_styles": 3, "out_norm": True}).eval()
    with torch.no_grad():  # styles that differ, as a trained network's do
        for name, param in model.named_parameters():
            if name.endswith(("gamma", "beta")):
                param.uniform_(0.5, 1.5) if name.endswith("gamma") else param.uniform_(-0.5, 0.5)
    samples = calibration_samples(model, calibration_set(None, SIZE)[0])
    assert len(samples) == 4 and {int(np.argmax(style)) for _, style in samples} == {0, 1, 2}  # 4 photos, 3 styles
    folder = save_model(model, tmp_path / "student")
    settings = QuantizeStage(runtimes=["onnx", "tflite"], size=SIZE)
    manifests = quantize(folder, tmp_path / "q", settings, vgg, grams, progress=False)
    convs = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    assert len(convs) == 6
    x = torch.from_numpy(image_batch(sample_content_paths("eval"), SIZE)[0].numpy())
    for manifest in manifests:
        contents = manifest["quantization"]["contents"]
        assert not contents["float_compute_convs"], contents
        # named as the model names them (litert-torch drops the ModuleList names: down.0.0 came out as 0.0)
        assert sorted(contents["int8_compute_convs"]) == convs, contents
        if manifest["format"] == "tflite":  # each style's scale and shift (style weights @ tables) stay float too
            assert contents["float_op_counts"]["FULLY_CONNECTED"] == contents["op_counts"]["FULLY_CONNECTED"] > 0
        assert manifest["parity"]["passed"], manifest["parity"]
        assert manifest["quantization"]["quality"]["grade"] in ("indistinguishable", "close", "different")
        runner = load_runner(tmp_path / "q" / manifest["format"] / manifest["artifact"])
        assert runner.input_names == ["image", "style_weights"]
        pictures = []
        for style in ("0", "2"):
            w = parse_style_weights(style, 3)
            got = torch.from_numpy(np.asarray(runner(x.numpy(), w.numpy())))
            with torch.no_grad():
                want = model(x, w)
            pictures.append(got)
            assert (got - want).abs().mean() < 0.05
        assert (pictures[0] - pictures[1]).abs().mean() > 0.02  # the int8 artifact still takes the style input
