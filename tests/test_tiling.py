"""Tiled stylization with the whole image's instance-norm statistics (compressor/tiling.py, exports/tile_export.py)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FRESH_CLI_BYTES
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio
from typer.testing import CliRunner

from compressor.data import sample_content_paths
from compressor.models import AdaINNet, AdaINSpec, STNSpec, TransformerNet, TransformerNetSpec, save_model
from compressor.tiling import (
    HEAP_HEADROOM,
    Geometry,
    MemoryModel,
    TilePlan,
    TileRunner,
    TilingError,
    measure_geometry,
    measure_memory,
    parse_bytes,
    plan_tiles,
    stylize_tiled,
    to_tensor,
    to_uint8,
)
from styleslim.cli import app

runner = CliRunner()
SMALL = TransformerNetSpec(conv1=8, conv2=16, trunk=16, res_inner=[16] * 5, deconv1=16, deconv2=8)
TILE_BAR = r"tiles: +\d+%"
SMALL_ADAIN = AdaINSpec(encoder=[8, 8, 16, 16, 16, 16, 16, 16, 32], decoder=[16] * 8)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TransformerNet(SMALL).eval()


@pytest.fixture(scope="module")
def photo():
    """A real photo (the rocket: sky above, ground below, so tiles differ), 216 x 324."""
    return np.asarray(Image.open(sample_content_paths("eval")[1]).convert("RGB").resize((324, 216), Image.LANCZOS))


def adain_run():
    """A small random AdaIN with a fixed style image, as a (1, 3, h, w) -> image function."""
    torch.manual_seed(0)
    adain = AdaINNet(SMALL_ADAIN).eval()
    for m in adain.modules():  # default init leaves the random decoder's output flat: He init keeps the signal
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    style = torch.rand(1, 3, 64, 64)
    return lambda x: 0.5 + adain(x, style) / 200  # output std ~35: scaled into [0, 1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(torch.from_numpy(a).float(), torch.from_numpy(b).float(), data_range=255.0))


def whole(run, pixels: np.ndarray) -> np.ndarray:
    return to_uint8(TileRunner(run)(to_tensor(pixels)))


def test_geometry_is_the_receptive_field(net):
    # TransformerNet: 9x9, two stride-2 3x3, ten 3x3 at stride 4, two upsampled 3x3, 9x9 -> radius 54 px.
    assert measure_geometry(net) == Geometry(stride=4, halo=56, bound=(True,) * 15)

    def padded(x):  # pads to a multiple of 4 and crops back, as multi-style stylizers do: the stride stays visible
        h, w = x.shape[-2:]
        return net(torch.nn.functional.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect"))[..., :h, :w]

    assert measure_geometry(padded).stride == 4
    adain = measure_geometry(adain_run())
    assert adain.stride == 8  # three 2x2 max pools
    assert adain.bound == (True, False)  # AdaIN's content statistics follow the image, its style's do not


def test_tiles_with_the_whole_image_statistics_reproduce_it(net, photo):
    plan = TilePlan(window=176, halo=56, stride=4, thumbnail=64)  # a small thumbnail starts, passes make it exact
    tiled = stylize_tiled(TileRunner(net), photo, plan, progress=False)
    assert tiled.shape == photo.shape
    assert np.abs(tiled.astype(int) - whole(net, photo)).max() <= 1


@pytest.mark.parametrize("family", ["multistyle", "arbitrary"])
def test_conditional_norm_networks_tile_like_the_whole_image(photo, family):
    """Dumoulin's and Ghiasi's networks (the imported real models' layouts): the per-style gamma/beta apply after
    the intercepted norm, so tiles with the whole image's statistics reproduce it."""
    from compressor.models.arbitrary import ArbitrarySpec, ArbitraryStyleNet
    from compressor.models.conditional_norm import SingleStyle, pad_to_multiple, parse_style_weights
    from compressor.models.multistyle import MultiStyleNet, MultiStyleSpec

    torch.manual_seed(0)
    if family == "multistyle":
        model = MultiStyleNet(MultiStyleSpec(n_styles=3, contract=[8, 8, 16], res_inner=[16, 16], expand=[8, 8]))
        run = SingleStyle(model.eval(), parse_style_weights("0:0.3,2:0.7", 3))
    else:
        model = ArbitraryStyleNet(ArbitrarySpec(style_dim=8, contract=[8, 8, 16], res_inner=[16, 16], expand=[8, 8]))
        vector = torch.randn(8)
        model.eval()
        run = lambda x: model(x, vector)  # noqa: E731
    net = pad_to_multiple(torch.no_grad()(run))
    plan = TilePlan(window=176, halo=measure_geometry(net).halo, stride=4, thumbnail=64)
    tiled = stylize_tiled(TileRunner(net), photo, plan, progress=False)
    assert tiled.shape == photo.shape
    assert np.abs(tiled.astype(int) - whole(net, photo)).max() <= 1


def test_statistics_passes_resume_from_cached_feature_maps(photo):
    """With the model known, each pass resumes each window after the deepest call an earlier pass cached (after
    the stride-4 stem, after each residual block, in the head): the same picture, bit for bit, with the stem run
    only until its output is cached."""
    from compressor.models.conditional_norm import SingleStyle, pad_to_multiple, parse_style_weights
    from compressor.models.multistyle import MultiStyleNet, MultiStyleSpec

    torch.manual_seed(0)
    model = MultiStyleNet(MultiStyleSpec(n_styles=2, contract=[16, 8, 16], res_inner=[16, 16, 16], expand=[8, 8]))
    run = pad_to_multiple(torch.no_grad()(SingleStyle(model.eval(), parse_style_weights("1", 2))))
    cached, recomputed = TileRunner(run, model), TileRunner(run)
    children, cuts = cached.cuts
    assert recomputed.cuts == ([], [])
    resumable = {children[c.module] for c in cuts}
    assert set(model.res) <= resumable and model.contract[2] in resumable
    assert model.contract[0] not in resumable  # 16 channels at full scale: 64 bytes a pixel, too big to cache
    stem_calls = []
    model.contract[0].conv.register_forward_hook(lambda *_: stem_calls.append(1))  # its parent is skipped, not it
    plan = TilePlan(window=176, halo=cached.geometry.halo, stride=4, thumbnail=64)
    fast = stylize_tiled(cached, photo, plan, progress=False)
    with_cache = len(stem_calls)
    slow = stylize_tiled(recomputed, photo, plan, progress=False)
    assert np.array_equal(fast, slow)
    assert with_cache < (len(stem_calls) - with_cache) / 2  # every pass and the tile pass ran the stem without it
    assert np.abs(fast.astype(int) - whole(run, photo)).max() <= 1


def test_adain_content_statistics_are_the_whole_images(photo):
    """AdaIN's mean_std (unbiased std plus eps) merged over the tiles; its style's statistics stay the style's."""
    run = adain_run()
    halo = measure_geometry(run).halo
    plan = TilePlan(window=2 * halo + 64, halo=halo, stride=8, thumbnail=64)
    exact = stylize_tiled(TileRunner(run), photo, plan, progress=False)
    per_tile = stylize_tiled(TileRunner(run), photo, plan, per_tile_stats=True, progress=False)
    reference = whole(run, photo)
    assert np.abs(exact.astype(int) - reference).max() <= 1
    assert psnr(per_tile, reference) < psnr(exact, reference) - 10


def test_thumbnail_statistics_agree_better_than_per_tile_statistics_and_worse_than_exact(net, photo):
    reference = whole(net, photo)
    plan = TilePlan(window=176, halo=56, stride=4, thumbnail=160, statistics="thumbnail")  # half-size: approximate
    thumb = stylize_tiled(TileRunner(net), photo, plan, progress=False)
    per_tile = stylize_tiled(TileRunner(net), photo, plan, per_tile_stats=True, progress=False)
    exact = stylize_tiled(TileRunner(net), photo, TilePlan(176, 56, 4, 160, "exact"), progress=False)
    assert psnr(thumb, reference) > psnr(per_tile, reference) + 3
    assert psnr(exact, reference) > max(psnr(thumb, reference) + 10, 55)


def test_spatial_transformer_is_refused(photo):
    stn_net = TransformerNet(SMALL.model_copy(update={"stn": STNSpec()})).eval()
    with pytest.raises(TilingError, match="`tile` 0"):
        stylize_tiled(TileRunner(stn_net), photo, TilePlan(128, 56, 4, 64), progress=False)


def test_memory_budget_triggers_tiling(net):
    memory = measure_memory(net)
    assert memory.per_pixel > 100  # bytes of activations per input pixel: float feature maps of 8-16 channels
    wide = measure_memory(TransformerNet(SMALL.model_copy(update={"conv1": 32, "deconv2": 32})).eval())
    assert wide.per_pixel > memory.per_pixel
    geometry = Geometry(4, 56, (True,) * 15)
    held, small, big = 300 * 2**20, 900 * 2**20, 64 * 2**30  # held: what the process is resident with already

    def plan(height, width, budget, model=memory, tile=None):
        return plan_tiles(height, width, geometry, model, budget, tile=tile, resident=held)

    assert not plan(800, 600, big).tiled
    tiled = plan(4000, 3000, small)
    assert tiled.tiled and tiled.window % 4 == 0 and tiled.core > 0
    room = (small - held) * HEAP_HEADROOM - 6 * 2048 * 3000  # file-backed input and output: a band of rows
    # stays resident, one tile has the rest
    assert memory.bytes_for(tiled.window**2) <= room < memory.bytes_for((tiled.window + 8) ** 2)
    assert memory.bytes_for(tiled.thumbnail * tiled.thumbnail * 3 / 4) <= room
    assert plan(800, 600, big, tile=200).window == 200
    assert not plan(4000, 3000, small, tile=0).tiled
    with pytest.raises(TilingError, match="`tile` 100"):
        plan(800, 600, big, tile=100)  # not above twice the halo
    with pytest.raises(TilingError, match="`max_memory`: decoding a 30000x40000"):
        plan(40000, 30000, small)  # Pillow's decoded image alone (4 bytes a pixel) is over budget
    with pytest.raises(TilingError, match="`max_memory`: .* even in 128-px tiles"):
        plan(4000, 3000, small, model=MemoryModel(0, 1e5))


def test_parse_bytes():
    assert parse_bytes("2GB") == 2 * 2**30 and parse_bytes("800MB") == 800 * 2**20 and parse_bytes("1.5g") == 3 * 2**29
    with pytest.raises(ValueError):
        parse_bytes("lots")


@pytest.mark.parametrize("tile", ["0", "176"])
def test_cli_keeps_the_exact_size_of_odd_images(tmp_path, net, tile):
    save_model(net, tmp_path / "model")
    Image.fromarray((np.random.default_rng(0).random((61, 97, 3)) * 255).astype(np.uint8)).save(tmp_path / "odd.png")
    result = runner.invoke(app, ["stylize", str(tmp_path / "odd.png"), "--model", str(tmp_path / "model"),
                                 "--tile", tile, "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (97, 61)


def test_cli_small_budget_tiles_like_an_explicit_tile(tmp_path, net, photo, monkeypatch):
    save_model(net, tmp_path / "model")
    Image.fromarray(photo).save(tmp_path / "photo.png")
    common = ["stylize", str(tmp_path / "photo.png"), "--model", str(tmp_path / "model")]
    result = runner.invoke(app, [*common, "-o", str(tmp_path / "whole.png")])
    assert result.exit_code == 0 and not re.search(TILE_BAR, result.output)  # 2 GB by default: fits at once
    # what this process holds plus 90 % of what the whole image needs: tiles (of about 200 px) fit, it does not
    held = FRESH_CLI_BYTES
    budget = f"{(held + 0.9 * measure_memory(net).bytes_for(photo.shape[0] * photo.shape[1])) / 2**20}MB"
    result = runner.invoke(app, [*common, "--max-memory", budget, "-o", str(tmp_path / "auto.png")])
    assert result.exit_code == 0, result.output
    assert re.search(TILE_BAR, result.output)  # the progress bar over tiles
    auto, reference = np.asarray(Image.open(tmp_path / "auto.png")), np.asarray(Image.open(tmp_path / "whole.png"))
    assert auto.shape == reference.shape
    # thumbnail = the image itself (under 1024 px): exact statistics, float rounding only
    assert np.abs(auto.astype(int) - reference).max() <= 2 and psnr(auto, reference) > 55
    for option, value in (("--tile", "-1"), ("--max-memory", "lots"), ("--tile", "130"), ("--statistics", "fast")):
        result = runner.invoke(app, [*common, option, value, "-o", str(tmp_path / "x.png")])
        assert result.exit_code == 2 and f"error: {option}" in result.output, result.output


def test_cli_video_frames_go_through_tiles(tmp_path, net):
    import imageio.v3 as iio

    frames = [np.asarray(Image.open(sample_content_paths("eval")[1]).convert("RGB").resize((160, 128)))] * 3
    iio.imwrite(tmp_path / "clip.mp4", frames, fps=10)
    save_model(net, tmp_path / "model")
    result = runner.invoke(app, ["stylize", str(tmp_path / "clip.mp4"), "--model", str(tmp_path / "model"),
                                 "--tile", "176", "-o", str(tmp_path / "styled.mp4")])
    assert result.exit_code == 0, result.output
    styled = list(iio.imiter(tmp_path / "styled.mp4"))
    assert len(styled) == 3 and styled[0].shape == (128, 160, 3)


# Hundreds of MB resident each (torchvision loads torch._dynamo, torchmetrics transformers): a 100 MP photo must
# stylize in 2 GB, so the stylize command imports none of them.
HEAVY = {"torchvision", "torchmetrics", "transformers", "scipy", "onnx", "onnxruntime", "tensorflow", "ai_edge_litert",
         "coremltools", "matplotlib", "skimage"}


def test_tiled_stylize_imports_no_heavy_library(tmp_path, net, photo):
    save_model(net, tmp_path / "model")
    Image.fromarray(photo[:100, :120]).save(tmp_path / "photo.png")  # 2 x 2 tiles of 176 px
    code = ("import sys\nfrom styleslim.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code, "stylize", str(tmp_path / "photo.png"), "--model",
                           str(tmp_path / "model"), "--tile", "176", "-o", str(tmp_path / "out.png")],
                          check=False, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert Image.open(tmp_path / "out.png").size == (120, 100)
    loaded = set(done.stdout.splitlines()[-1].split())
    assert "torch" in loaded and not HEAVY & loaded, HEAVY & loaded


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("tflite", marks=pytest.mark.slow)])  # LiteRT: ~2 min here
def test_tile_artifact_matches_torch_and_stylizes_beyond_its_size(tmp_path, net, photo, fmt):
    from exports.manifest import manifest_path, read_manifest
    from exports.tile_export import export_tile_artifact

    path, manifest = export_tile_artifact(net, fmt, tmp_path / "exports", size=160)
    assert read_manifest(path)["parity"]["passed"] and manifest["parity"]["psnr_db"] >= 45
    assert manifest["tile"] == {"window": 160, "halo": 56, "stride": 4, "channels": [8, 16, 16] + [16] * 10 + [16, 8]}
    Image.fromarray(photo).save(tmp_path / "photo.png")
    result = runner.invoke(app, ["stylize", str(tmp_path / "photo.png"), "--model", str(path),
                                 "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == photo.shape  # full resolution, not 160 x 160 stretched back
    # the artifact measures the whole image's statistics too: its tiles reproduce the whole image in torch
    assert np.abs(out.astype(int) - whole(net, photo)).max() <= 2 and psnr(out, whole(net, photo)) > 55
    result = runner.invoke(app, ["stylize", str(tmp_path / "photo.png"), "--model", str(path), "--tile", "256",
                                 "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "160x160" in result.output
    # an artifact exported before the core mask cannot measure the whole image's statistics: one line, re-export
    manifest_file = manifest_path(path)
    old = json.loads(manifest_file.read_text())
    old["inputs"] = [spec for spec in old["inputs"] if spec["name"] != "core_mask"]
    manifest_file.write_text(json.dumps(old))
    result = runner.invoke(app, ["stylize", str(tmp_path / "photo.png"), "--model", str(path),
                                 "-o", str(tmp_path / "y.png")])
    assert result.exit_code == 2 and result.output.startswith(f"error: {path}:") and "export it again" in result.output
    assert not (tmp_path / "y.png").exists()


def test_a_process_holding_more_than_the_budget_still_paints_a_small_photo(monkeypatch):
    """A long-lived process (a notebook, a test run) past the whole budget: the budget bounds what one image adds."""
    from compressor.stylize import model_stylizer

    monkeypatch.setattr("compressor.tiling.resident_bytes", lambda: 3 * 2**30)
    torch.manual_seed(0)
    stylizer = model_stylizer(AdaINNet(SMALL_ADAIN).eval(), torch.rand(1, 3, 32, 32))
    assert stylizer.plan(32, 32, None, 2 * 2**30).window == 0  # whole, by the cheap per-pixel estimate
    assert stylizer.tiler.plan(32, 32, 2 * 2**30).window == 0  # and by the tiler's own plan, which refused it
