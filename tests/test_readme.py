"""The README as a user follows it: its Python example runs as written, and every styleslim command in it runs
(with fast settings where it trains or times)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from compressor.data import sample_content_paths
from compressor.models import TransformerNet

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE = ROOT / "examples" / "compress_a_style_network.py"
FAST = {  # extra options that keep a command within the test budget; the command itself is the README's
    "run": ["--set", "distill.steps=2", "--set", "quantize.size=64", "--set", "export.size=64", "--set",
            "evaluate.size=64", "--set", "evaluate.latency_sizes=[64]", "--set", "evaluate.latency_runs=3",
            "--set", "evaluate.memory=false"],
    "quantize": ["--size", "64"],
    "evaluate": ["--size", "64", "--latency-runs", "3", "--no-memory"],
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[list[str]]:
    """Every ``styleslim ...`` line of the README's bash blocks, comments dropped."""
    lines = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("styleslim ")]
    return [shlex.split(line, comments=True)[1:] for line in lines]


def _photo(path: Path, side: int = 96) -> Path:
    Image.open(sample_content_paths("eval")[0]).convert("RGB").resize((side, side)).save(path)
    return path


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """What a user has at hand: a pytorch/examples checkpoint, a photo, a folder of photos, a short video."""
    folder = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    torch.save({k: torch.randn_like(v) * 0.05 for k, v in TransformerNet().state_dict().items()},
               folder / "my_style.pth")
    _photo(folder / "photo.jpg")
    (folder / "photos").mkdir()
    for i in range(2):
        _photo(folder / "photos" / f"p{i}.jpg", 64 + 16 * i)
    frames = np.stack([np.asarray(Image.open(folder / "photo.jpg"))] * 3)
    iio.imwrite(folder / "holiday.mp4", frames, fps=3)
    shutil.copytree(ROOT / "recipes", folder / "recipes")
    return folder


def test_the_python_example_is_the_script_and_runs_as_written(tmp_path):
    [example] = blocks("python")
    assert example == EXAMPLE.read_text()
    _photo(tmp_path / "photo.jpg", 256)
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "compressed" / "model-int8-dynamic.tflite").is_file()
    grade, judged = result.stdout.strip().splitlines()[-2:]
    assert grade in ("indistinguishable", "close", "different")
    assert "'perceptual':" in judged and "magenta-style-predictor-mobilenetv2" in judged


def test_every_readme_command_runs(user_folder):
    """Each in a fresh process, as a user's shell runs them (and so no network stays loaded in the test process)."""
    seen = [argv[0] for argv in commands()]
    assert {"run", "quantize", "evaluate", "import", "export", "stylize"} <= set(seen), seen
    for argv in commands():
        result = subprocess.run([sys.executable, "-m", "styleslim.cli", *argv, *FAST.get(argv[0], [])],
                                capture_output=True, text=True, cwd=user_folder, timeout=900)
        assert result.returncode == 0, (argv, result.stderr[-3000:])
    assert (user_folder / "runs" / "compress_my_model" / "quantized" / "tflite" / "model-int8.tflite").is_file()
    assert (user_folder / "runs" / "compress_my_model" / "report.html").is_file()
    assert (user_folder / "android" / "report" / "report.json").is_file()
    assert list((user_folder / "coreml").glob("*.mlpackage"))
    assert {p.stem for p in (user_folder / "stylized").rglob("*.*")} >= {"photo", "holiday", "p0", "p1"}
    assert (user_folder / "blend.png").is_file() and (user_folder / "phone.png").is_file()
    for page in ("webpage", "webpage-int8"):
        assert (user_folder / page / "index.html").is_file() and (user_folder / page / "page.json").is_file()
    report = (user_folder / "runs" / "compress_my_model" / "report.md").read_text()
    assert "@ onnxruntime-web" in report and "@ litert-web" in report
