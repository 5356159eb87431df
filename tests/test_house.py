"""The house: a family defined only in this file goes through every stage; leaf modules stay torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict
from torch import nn

from compressor.config import PruneStage, TrainConfig
from compressor.data import ContentCrops, sample_content_paths
from compressor.distill import make_objective, train
from compressor.models import Family, create_model, get_family, load_model, parse_spec, register_family, save_model
from compressor.prune import prune_model
from compressor.stylize import load_stylizer, stylize_files

REPO = Path(__file__).resolve().parents[1]


class TinySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["tiny_test"] = "tiny_test"
    style: str | None = None
    width: int = 8


class TinyNet(nn.Module):
    """Two convs and a residual to the input: the smallest style transformer."""

    def __init__(self, spec: TinySpec):
        super().__init__()
        self.spec = spec
        self.conv1 = nn.Conv2d(3, spec.width, 3, padding=1)
        self.conv2 = nn.Conv2d(spec.width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))

    def current_spec(self) -> TinySpec:
        return self.spec.model_copy(update={"width": self.conv1.out_channels})


class TinyFamily(Family):
    name = "tiny_test"
    spec = TinySpec
    module = TinyNet
    role = "style_transformer"

    def objective(self, student, teacher, config, vgg, style_grams, style_images):
        def objective(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
            loss = (model(batch) - batch.flip(-1)).abs().mean()  # learn a mirror
            return {"mirror": loss, "total": loss}

        return objective


register_family(TinyFamily())


def test_a_family_registered_in_a_test_file_builds_saves_prunes_trains_and_stylises(tmp_path):
    model = create_model({"family": "tiny_test", "width": 8})
    assert isinstance(model, TinyNet) and get_family(model).name == "tiny_test"
    assert parse_spec({"family": "tiny_test"}) == TinySpec()

    save_model(model, tmp_path / "tiny")
    reloaded = load_model(tmp_path / "tiny")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))

    pruned = prune_model(reloaded, PruneStage(ratio=0.5))
    assert pruned.current_spec().width == 4 and pruned.conv2.out_channels == 3  # the RGB output is protected
    save_model(pruned, tmp_path / "pruned")
    assert load_model(tmp_path / "pruned").conv1.out_channels == 4

    config = TrainConfig(steps=3, batch_size=2, crop=16, lr=1e-2, checkpoint_every=3)
    data = ContentCrops(sample_content_paths("train"), 16, length=8)
    history = train(pruned, make_objective(pruned, None, config, None, None), data, config, tmp_path / "trained",
                    progress=False)
    assert [set(row) >= {"mirror", "total"} for row in history] == [True] * 3

    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    stylizer = load_stylizer(tmp_path / "trained")
    [out] = stylize_files(stylizer, [tmp_path / "in.png"], tmp_path / "out.png", progress=False)
    assert Image.open(out).size == (30, 20)


def test_unknown_family_names_the_registered_ones():
    with pytest.raises(ValueError, match="transformer_net"):
        get_family("no_such_family")
    with pytest.raises(TypeError, match="no registered model family"):
        get_family(nn.Conv2d(3, 3, 1))


def test_recipe_rejects_an_unknown_family(tmp_path):
    from compressor.recipe import RecipeError, load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\nmodel: {family: nope}\n")
    with pytest.raises(RecipeError, match="model.family: unknown family 'nope'"):
        load_recipe(path)


@pytest.mark.parametrize("module", ["evaluation.report", "compressor.config", "compressor.io"])
def test_leaf_modules_do_not_import_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


def test_atomic_writes_leave_no_temp_and_share_the_file(tmp_path):
    import hashlib

    from compressor.io import atomic_write, file_sha256, write_json

    path = write_json(tmp_path / "a" / "doc.json", {"x": 1})
    assert path.read_text() == '{\n  "x": 1\n}\n' and (path.stat().st_mode & 0o777) == 0o644

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a" / "broken.bin", crash)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["doc.json"]
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
