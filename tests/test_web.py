"""The web runtimes: artifacts run in a real headless Chromium (ONNX Runtime Web, LiteRT.js) with parity, clocks
and threads checked, their rows in a report, and the page ``styleslim export --format web`` writes, driven."""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from compressor.config import EvaluateStage, QuantizeStage
from compressor.data import sample_content_paths, sample_style_path
from compressor.models import (
    ArbitrarySpec,
    ArbitraryStyleNet,
    MultiStyleNet,
    MultiStyleSpec,
    TransformerNet,
    TransformerNetSpec,
    load_model,
    save_model,
)
from compressor.models.arbitrary import style_vector
from exports.backends.browser import browser, missing
from exports.common import ExportError
from exports.parity import parity
from exports.quantize import quantize
from exports.runtime import load_runner
from exports.stage import export_artifact
from styleslim.cli import app

SIZE = 64
WEB = ("onnxruntime-web", "litert-web")
NATIVE = {"onnxruntime-web": ("onnx", "onnxruntime"), "litert-web": ("tflite", "litert")}


@pytest.fixture(scope="module", autouse=True)
def chromium():
    problems = [p for p in map(missing, WEB) if p]
    if problems:
        # `make test` installs Chromium and the npm runtimes; only a hand-made environment may lack them, never CI.
        assert not os.environ.get("CI"), f"CI must run the browser tests: {problems[0]}"
        pytest.skip(problems[0])


def _seeded(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small TransformerNet whose output spreads over [0, 1] (a flat output would make parity meaningless)."""
    model = _seeded(TransformerNet(TransformerNetSpec(conv1=8, conv2=16, trunk=32, res_inner=[16] * 5, deconv1=16,
                                                      deconv2=8)))
    with torch.no_grad():
        model.deconv3.conv2d.weight.mul_(60.0)
        model.deconv3.conv2d.bias.fill_(0.5 * 255)
    return save_model(model, tmp_path_factory.mktemp("tnet") / "model")


@pytest.fixture(scope="module")
def artifacts(model_dir, tmp_path_factory):
    """fp32 ONNX and TFLite exports, and int8 ones: ONNX static (float I/O), TFLite dynamic and static."""
    out = tmp_path_factory.mktemp("artifacts")
    found = {("onnx", "fp32"): export_artifact(model_dir, "onnx", out, size=(SIZE, SIZE))[0],
             ("tflite", "fp32"): export_artifact(model_dir, "tflite", out, size=(SIZE, SIZE))[0]}
    settings = QuantizeStage(runtimes=["onnx", "tflite"], modes=["static", "dynamic"], size=SIZE)
    for manifest in quantize(model_dir, out / "q", settings, progress=False):
        found[(manifest["format"], manifest["precision"])] = out / "q" / manifest["format"] / manifest["artifact"]
    return found


@pytest.mark.parametrize("runtime", WEB)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_web_runtime_matches_pytorch_and_its_native_runtime(artifacts, model_dir, runtime, precision):
    fmt, native = NATIVE[runtime]
    # LiteRT.js takes no int8 tensors: its int8 is the dynamic mode (int8 weights, float I/O)
    path = artifacts[(fmt, "int8-dynamic" if runtime == "litert-web" and precision == "int8" else precision)]
    model = load_model(model_dir)
    web = load_runner(path, threads=2, runtime=runtime)
    assert web.runtime == runtime
    assert web.info["threads"] == 2 and web.info["cross_origin_isolated"] is True, web.info
    on_web = parity(model, web, "fp32", (SIZE, SIZE))
    if precision == "fp32":
        assert on_web["passed"] and on_web["psnr_db"] >= 40.0, on_web
    else:  # int8 kernels differ between runtimes; the browser must not lose fidelity the native runtime keeps
        at_home = parity(model, load_runner(path, threads=2), "fp32", (SIZE, SIZE))
        assert at_home["runtime"] == native
        assert on_web["psnr_db"] >= at_home["psnr_db"] - 3.0, (on_web, at_home)
    times = web.time_last(3)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert browser().console_errors() == []


@pytest.mark.parametrize("runtime", WEB)
def test_each_thread_count_runs_in_a_page_of_its_own(artifacts, runtime):
    """A WASM runtime fixes its threads when a page first starts it: asking for another count must not get the
    first one while saying otherwise."""
    path = artifacts[(NATIVE[runtime][0], "fp32")]
    one, two = (load_runner(path, threads=n, runtime=runtime) for n in (1, 2))
    assert (one.info["threads"], two.info["threads"]) == (1, 2)
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    np.testing.assert_allclose(one(x), two(x), atol=1e-4)
    assert two.time_last(2) and one.time_last(2)


def test_litert_web_names_what_it_cannot_run(artifacts):
    with pytest.raises(ExportError, match="no int8 tensors"):
        load_runner(artifacts[("tflite", "int8")], runtime="litert-web")
    with pytest.raises(ExportError, match="runs tflite artifacts"):
        load_runner(artifacts[("onnx", "fp32")], runtime="litert-web")


def test_report_puts_web_rows_beside_native_ones(artifacts, model_dir, tmp_path, random_vgg):
    from styleslim.stages import evaluate_paths

    targets = [artifacts[("onnx", "fp32")], artifacts[("tflite", "fp32")]]
    settings = EvaluateStage(size=SIZE, latency_sizes=[SIZE], latency_runs=3, warmup=1, memory=False, web=list(WEB))
    report = evaluate_paths(targets, model_dir, random_vgg, tmp_path, settings=settings, progress=False)
    rows = {(r["name"], r["runtime"]): r for r in report["variants"]}
    for path, runtime in zip(targets, WEB):
        native, web = rows[(path.name, NATIVE[runtime][1])], rows[(f"{path.name} @ {runtime}", runtime)]
        assert web["sha256"] == native["sha256"]  # the same file, another runtime
        assert web["quality"]["judge"]["grade"] == "indistinguishable", web["quality"]
        assert web["latency_ms"][runtime]["p50"] > 0 and web["runtime_info"]["threads"] == settings.threads
        assert web["memory"] is None  # the browser's memory is not this process's
    assert len(report["exports"]) == len(targets)  # an artifact is listed once, whatever runs it
    text = (tmp_path / "report.md").read_text()
    assert "Browser: headless Chromium" in text and "onnxruntime-web" in text and "litert-web" in text
    assert text.count("× the same artifact's native p50") == 2  # what the browser costs, per web runtime


def _drive(page_dir, photo, style=None, style_image=None) -> tuple[np.ndarray, str]:
    """Open an exported page, choose ``photo`` (and a style), wait for the picture; the canvas as float RGB."""
    page = browser()
    driver = page.driver
    page.open(page.serve_folder(page_dir) + "index.html")
    wait = "return new Promise(r => {{ const w = () => {} ? r(true) : setTimeout(w, 20); w(); }})"
    page.call(wait.format("document.body.dataset.state !== 'loading'"))
    assert driver.execute_script("return document.body.dataset.state") == "ready"
    if style is not None:
        options = driver.execute_script("return Array.from(document.getElementById('style').options).length")
        assert options == style[1]
        driver.execute_script(f"document.getElementById('style').value = '{style[0]}'")
    if style_image is not None:
        driver.find_element("id", "style-file").send_keys(str(style_image))
    driver.find_element("id", "photo").send_keys(str(photo))
    page.call(wait.format("document.body.dataset.state === 'done'"))
    status = driver.execute_script("return document.getElementById('status').textContent")
    url = driver.execute_script("return document.getElementById('output').toDataURL('image/png')")
    canvas = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    assert page.console_errors() == []
    return np.asarray(canvas, np.float32) / 255, status


def _photo(tmp_path, size: tuple[int, int]) -> tuple:
    image = Image.open(sample_content_paths("eval")[0]).convert("RGB").resize(size)
    image.save(tmp_path / "photo.png")
    return tmp_path / "photo.png", torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def _reference(model: nn.Module, x: torch.Tensor, *extra: torch.Tensor) -> np.ndarray:
    """PyTorch's picture as the page makes it: the photo padded (edges repeated) to a multiple of 8, then cut."""
    h, w = x.shape[2:]
    padded = nn.functional.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")
    with torch.no_grad():
        y = model(padded, *extra).clamp(0, 1)[0, :, :h, :w]
    return y.permute(1, 2, 0).numpy()


def test_exported_page_stylizes_a_photo_at_its_own_size(model_dir, tmp_path):
    out = tmp_path / "page"
    result = CliRunner().invoke(app, ["export", str(model_dir), "--format", "web", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = json.loads((out / "page.json").read_text())
    assert page["runtime"] == "onnxruntime-web" and page["fixed"] is None  # any size: the photo runs whole
    assert (out / page["artifact"]).is_file() and (out / f"{page['artifact']}.manifest.json").is_file()
    assert (out / "runtimes/onnxruntime-web/ort-wasm-simd-threaded.wasm").is_file()
    photo, x = _photo(tmp_path, (200, 150))
    canvas, status = _drive(out, photo)
    assert canvas.shape == (150, 200, 3)
    assert _psnr(canvas, _reference(load_model(model_dir), x)) >= 35.0
    assert "200x150 in" in status and "ms on onnxruntime-web" in status


def test_exported_page_picks_a_style_of_a_multistyle_network(tmp_path):
    model = _seeded(MultiStyleNet(MultiStyleSpec(n_styles=3, contract=[8, 16, 16], res_inner=[16] * 2, expand=[16, 8])))
    with torch.no_grad():  # styles that differ: each its own norm scales and shifts
        for name, param in model.named_parameters():
            if name.endswith(("gamma", "beta")):
                param.uniform_(0.5, 1.5) if name.endswith("gamma") else param.uniform_(-0.3, 0.3)
    folder = save_model(model, tmp_path / "multistyle")
    result = CliRunner().invoke(app, ["export", str(folder), "--format", "web", "-o", str(tmp_path / "page")])
    assert result.exit_code == 0, result.output
    photo, x = _photo(tmp_path, (96, 72))
    canvas, _ = _drive(tmp_path / "page", photo, style=(2, 3))
    picked = _reference(model, x, torch.tensor([0.0, 0.0, 1.0]))
    assert _psnr(canvas, picked) >= 35.0
    assert _psnr(canvas, picked) > _psnr(canvas, _reference(model, x, torch.tensor([1.0, 0.0, 0.0]))) + 10


def test_exported_page_runs_an_arbitrary_style_network_with_its_style_predictor(tmp_path):
    model = _seeded(ArbitraryStyleNet(ArbitrarySpec(contract=[8, 16, 16], res_inner=[16] * 2, expand=[16, 8])))
    folder = save_model(model, tmp_path / "arbitrary")
    result = CliRunner().invoke(app, ["export", str(folder), "--format", "web", "-o", str(tmp_path / "page")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "page/page.json").read_text())["style"]["kind"] == "vector"
    style = tmp_path / "style.png"  # square at the predictor's side: no resampling difference between the two
    Image.open(sample_style_path("starry_night")).convert("RGB").resize((256, 256)).save(style)
    photo, x = _photo(tmp_path, (96, 72))
    canvas, _ = _drive(tmp_path / "page", photo, style_image=style)
    vector = style_vector(torch.from_numpy(np.asarray(Image.open(style), np.float32) / 255).permute(2, 0, 1))
    assert _psnr(canvas, _reference(model, x, vector)) >= 35.0


def test_exported_page_tiles_a_fixed_size_artifact(artifacts, model_dir, tmp_path):
    out = tmp_path / "page"
    result = CliRunner().invoke(app, ["export", str(artifacts[("tflite", "fp32")]), "--format", "web", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "page.json").read_text())["fixed"] == [SIZE, SIZE]
    photo, x = _photo(tmp_path, (150, 100))  # tiles of 64 px at x = 0, 48, 86 and y = 0, 36 (16 px overlaps)
    canvas, status = _drive(out, photo)
    assert canvas.shape == (100, 150, 3) and "on litert-web" in status
    # where one tile alone paints (the first tile's top left, the last tile's bottom right), it is PyTorch's
    # picture of that tile; each tile normalises with its own statistics
    model = load_model(model_dir)
    assert _psnr(canvas[:36, :48], _reference(model, x[:, :, :64, :64])[:36, :48]) >= 35.0
    assert _psnr(canvas[64:, 112:], _reference(model, x[:, :, 36:, 86:])[28:, 26:]) >= 35.0


def test_web_export_refuses_bad_input_in_one_line(model_dir, artifacts, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = [
        (["--format", "web", "-o", str(tmp_path / "full")], "-o", "not empty"),
        (["--format", "web", "--web-runtime", "webgl", "-o", str(tmp_path / "x")], "--web-runtime", "unknown"),
    ]
    for args, where, what in cases:
        result = CliRunner().invoke(app, ["export", str(model_dir), *args])
        assert result.exit_code == 2, result.output
        line = result.output.strip()
        assert line.startswith(f"error: {where}") and what in line and "\n" not in line, line
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(app, ["export", str(artifacts[("onnx", "fp32")]), "--format", "web",
                                      "--web-runtime", "litert-web", "-o", str(tmp_path / "y")])
    assert result.exit_code == 2 and "the web runtimes run" in result.output, result.output
    assert not (tmp_path / "y").exists()
