"""The plain style-transfer paths the compressed models exist for: train, gatys, stylize, style library."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from compressor.config import TrainConfig
from compressor.data import ContentCrops, load_image, sample_content_paths, sample_style_path
from compressor.distill import batch_for_step, train
from compressor.gatys import GatysConfig, stylize_gatys
from compressor.losses import style_grams
from compressor.models import TransformerNet, TransformerNetSpec, load_model, save_model
from compressor.models.transformer_net import transformer_objective
from styleslim.cli import app

runner = CliRunner()
SMALL = TransformerNetSpec(conv1=8, conv2=16, trunk=32, res_inner=[16] * 5, deconv1=16, deconv2=8)


def test_short_training_lowers_the_loss(tmp_path, random_vgg):
    grams = style_grams(random_vgg, load_image(sample_style_path(), size=64).unsqueeze(0))
    data = ContentCrops(sample_content_paths("train")[:1], crop=48)
    config = TrainConfig(steps=4, batch_size=2, crop=48, lr=1e-2, checkpoint_every=2)
    objective = transformer_objective(config, random_vgg, grams)
    model = TransformerNet(SMALL)
    probe = batch_for_step(data, seed=123, step=0, batch_size=2)
    with torch.no_grad():
        before = objective(model, probe)["total"].item()
    history = train(model, objective, data, config, tmp_path / "m", progress=False)
    with torch.no_grad():
        after = objective(model, probe)["total"].item()
    assert len(history) == 4 and after < before
    assert (tmp_path / "m" / "train_log.csv").read_text().count("\n") == 5
    torch.testing.assert_close(load_model(tmp_path / "m")(probe), model(probe))


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_gatys_lowers_total_loss(random_vgg, optimizer):
    content = load_image(sample_content_paths("eval")[0], size=48).unsqueeze(0)
    grams = style_grams(random_vgg, load_image(sample_style_path(), size=48).unsqueeze(0))
    snapshots = []
    image, history = stylize_gatys(content, grams, random_vgg,
                                   GatysConfig(steps=6, optimizer=optimizer, snapshot_every=3),
                                   snapshot=lambda step, img: snapshots.append(step), progress=False)
    assert history[-1] < history[0]
    assert image.shape == content.shape and 0 <= image.min() and image.max() <= 1
    assert snapshots == [3, 6]


def test_gatys_multiscale_coarse_to_fine(random_vgg):
    content = load_image(sample_content_paths("eval")[1], size=64).unsqueeze(0)
    grams = style_grams(random_vgg, load_image(sample_style_path(), size=48).unsqueeze(0))
    image, history = stylize_gatys(content, grams, random_vgg, GatysConfig(steps=3, scales=[32, 64], init="noise"),
                                   progress=False)
    assert image.shape[-1] == 64 and len(history) == 6


def test_gatys_cli_with_style_library(tmp_path, skimage_data):
    lib = tmp_path / "styles.safetensors"
    result = runner.invoke(app, ["style-library", "starry_night", str(sample_style_path("composition_vii")),
                                 "--style-size", "64", "--loss-network", "random", "-o", str(lib)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "g.png"
    result = runner.invoke(app, ["gatys", str(skimage_data / "chelsea.png"), "composition_vii", "--style-library",
                                 str(lib), "--steps", "3", "--size", "48", "--snapshot-every", "3",
                                 "--loss-network", "random", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] == 48 and (tmp_path / "g_snapshots" / "step_000003.png").is_file()
    result = runner.invoke(app, ["gatys", str(skimage_data / "chelsea.png"), "nope", "--style-library",
                                 str(lib), "--loss-network", "random"])
    assert result.exit_code == 2 and "no style 'nope'" in result.output


def test_image_modes_are_normalised(tmp_path, skimage_data):
    gray = load_image(skimage_data / "camera.png")
    assert gray.shape[0] == 3 and torch.equal(gray[0], gray[1])
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:4, ..., 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (3, 8, 8)
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and image[:, 7, 0].tolist() == [1.0, 1.0, 1.0]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png")


def test_stylize_cli_folder_with_gray_and_rgba_images(tmp_path, skimage_data):
    save_model(TransformerNet(SMALL), tmp_path / "model")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(skimage_data / "camera.png").resize((40, 40)).save(folder / "gray.png")
    Image.new("RGBA", (40, 40), (10, 200, 30, 128)).save(folder / "rgba.png")
    Image.new("RGB", (40, 40), (200, 10, 30)).save(folder / "rgb.jpg")
    result = runner.invoke(app, ["stylize", str(folder), "--model", str(tmp_path / "model"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == ["gray.png", "rgb.png", "rgba.png"]
    assert all(Image.open(tmp_path / "out" / n).mode == "RGB" for n in outputs)
    result = runner.invoke(app, ["stylize", str(tmp_path / "missing.png"), "--model", str(tmp_path / "model")])
    assert result.exit_code == 2 and "missing.png" in result.output


def test_stylize_video_keeps_frame_count_and_fps(tmp_path):
    import imageio.v3 as iio

    frames = [np.full((32, 32, 3), i * 40, dtype=np.uint8) for i in range(5)]
    iio.imwrite(tmp_path / "clip.mp4", frames, fps=12)
    save_model(TransformerNet(SMALL), tmp_path / "model")
    result = runner.invoke(app, ["stylize", str(tmp_path / "clip.mp4"), "--model", str(tmp_path / "model"),
                                 "-o", str(tmp_path / "styled.mp4")])
    assert result.exit_code == 0, result.output
    assert iio.immeta(tmp_path / "styled.mp4")["fps"] == pytest.approx(12)
    assert len(list(iio.imiter(tmp_path / "styled.mp4"))) == 5
    assert not list(tmp_path.glob(".styled*"))


def test_adain_stylize_needs_style(tmp_path):
    from compressor.models import AdaINNet, AdaINSpec

    save_model(AdaINNet(AdaINSpec(encoder=[8, 8, 16, 16, 16, 16, 16, 16, 32], decoder=[16] * 8)), tmp_path / "adain")
    img = tmp_path / "c.png"
    Image.new("RGB", (32, 32), (100, 120, 140)).save(img)
    result = runner.invoke(app, ["stylize", str(img), "--model", str(tmp_path / "adain"), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2 and "--style" in result.output
    result = runner.invoke(app, ["stylize", str(img), "--model", str(tmp_path / "adain"), "--style", "starry_night",
                                 "--alpha", "0.5", "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o.png").size == (32, 32)


def test_cli_version_and_help():
    assert runner.invoke(app, ["--version"]).output.strip().startswith("styleslim ")
    for command in ["train", "gatys", "stylize", "run", "style-library"]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_stylize_runs_exported_artifacts_like_the_torch_model(tmp_path, fmt):
    from exports.stage import export_artifact

    model = TransformerNet(SMALL).eval()
    save_model(model, tmp_path / "model")
    artifact, _ = export_artifact(tmp_path / "model", fmt, tmp_path / "art", size=(48, 48))
    Image.new("RGB", (48, 48), (30, 140, 220)).save(tmp_path / "square.png")
    Image.new("RGB", (64, 40), (200, 60, 20)).save(tmp_path / "wide.png")
    for name in ("square", "wide"):
        result = runner.invoke(app, ["stylize", str(tmp_path / f"{name}.png"), "--model", str(artifact),
                                     "-o", str(tmp_path / f"{fmt}_{name}.png")])
        assert result.exit_code == 0, result.output
    via_runtime = load_image(tmp_path / f"{fmt}_square.png")
    with torch.no_grad():
        via_torch = model(load_image(tmp_path / "square.png").unsqueeze(0))[0].clamp(0, 1)
    assert (via_runtime - via_torch).abs().max() <= 2 / 255  # 8-bit rounding of the saved image
    assert Image.open(tmp_path / f"{fmt}_wide.png").size == (64, 40)  # fixed-shape artifact, size restored


def test_strength_and_keep_colors_act_pixel_by_pixel(tmp_path):
    """--strength blends the photo to the picture; --keep-colors keeps the photo's chroma, the picture's luma;
    tiles give what the whole image gives."""
    from typer.testing import CliRunner

    from compressor.data import load_image, sample_content_paths, save_image
    from compressor.models import MultiStyleNet, MultiStyleSpec, save_model
    from compressor.stylize import LUMA
    from styleslim.cli import app

    torch.manual_seed(0)
    model = save_model(MultiStyleNet(MultiStyleSpec(n_styles=3, contract=[8, 8, 8], res_inner=[8], expand=[8, 8])),
                       tmp_path / "m")
    photo_path = save_image(load_image(sample_content_paths("eval")[0], size=96)[None], tmp_path / "p.png")
    photo = load_image(photo_path)[None]

    def run(*options: str, name: str) -> torch.Tensor:
        result = CliRunner().invoke(app, ["stylize", str(photo_path), "--model", str(model), "--style-index", "1",
                                          *options, "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        return load_image(tmp_path / name)[None]

    full, none = run(name="full.png"), run("--strength", "0", name="none.png")
    assert (none - photo).abs().max() <= 1 / 255
    half = run("--strength", "0.5", name="half.png")
    assert (half - (full + photo) / 2).abs().max() <= 2 / 255
    kept = run("--keep-colors", name="kept.png")
    luma = lambda x: (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1)  # noqa: E731
    chroma = lambda x: x - luma(x)[:, None]  # noqa: E731
    assert (luma(kept) - luma(full)).abs().mean() < 3 / 255
    assert (chroma(kept) - chroma(photo)).abs().mean() < (chroma(full) - chroma(photo)).abs().mean() / 3
    tiled = run("--keep-colors", "--tile", "64", name="tiled.png")
    assert (tiled - kept).abs().max() <= 3 / 255


def test_styles_lists_and_sheets_a_multi_style_model(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from compressor.data import sample_content_paths
    from compressor.models import MultiStyleNet, MultiStyleSpec, save_model
    from styleslim.cli import app

    model = save_model(MultiStyleNet(MultiStyleSpec(n_styles=3, contract=[8, 8, 8], res_inner=[8], expand=[8, 8])),
                       tmp_path / "m")
    result = CliRunner().invoke(app, ["styles", str(model)])
    assert result.exit_code == 0 and "3 style(s): --style-index 0..2" in result.output, result.output
    result = CliRunner().invoke(app, ["styles", str(model), "--sheet", str(sample_content_paths("eval")[0]),
                                      "--tile", "64", "-o", str(tmp_path / "sheet.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "sheet.png").size == (3 * 64, 64)


@pytest.mark.parametrize("names, style, weights, says", [
    (["content", "style"], "starry_night", None, "takes a style image"),
    (["image", "style_vector"], "starry_night", "3", "not `style_index`"),
], ids=["adain-artifact", "weights-to-an-arbitrary-artifact"])
def test_stylize_refuses_what_a_two_input_artifact_cannot_take(names, style, weights, says):
    """An AdaIN artifact's style image is not fed here; style weights never reach an arbitrary-style artifact."""
    from types import SimpleNamespace

    from compressor.errors import UserError
    from compressor.stylize import _artifact_style_input

    runner = SimpleNamespace(input_names=names, input_shapes=[[1, 3, 64, 64], [100]])
    with pytest.raises(UserError, match=says):
        _artifact_style_input(runner, Path("model.onnx"), style, weights)
