"""L1 structured channel pruning: shapes, options, reload without torch-pruning, VGG tap modes, loss preservation."""

from __future__ import annotations

import copy
import functools
import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from compressor.config import PruneStage
from compressor.models import (
    AdaINNet,
    STNSpec,
    TransformerNet,
    TransformerNetSpec,
    VGG19Spec,
    load_model,
    load_vgg19,
    read_spec,
    save_model,
)
from compressor.prune import example_inputs_for, prune_model

torch.set_num_threads(2)
VGG_TAPS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]


def _seeded(model: nn.Module) -> nn.Module:
    """Random affine InstanceNorm parameters, so the norms take part in the importance and the outputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm2d) and m.affine:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "transformer_net":
        return _seeded(TransformerNet())
    if family == "transformer_net_stn":
        return _seeded(TransformerNet(TransformerNetSpec(stn=STNSpec())))
    if family == "adain":
        return AdaINNet().eval()
    return copy.deepcopy(_vgg())


@functools.cache
def _vgg() -> nn.Module:
    return load_vgg19("random", VGG19Spec(taps=VGG_TAPS))


def _run(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    return torch.cat([v.flatten() for v in out.values()]) if isinstance(out, dict) else out


def _transformer_widths_consistent(model: TransformerNet) -> None:
    """Every InstanceNorm matches the conv before it; every conv's input matches what feeds it."""
    pairs = [(model.conv1, model.in1), (model.conv2, model.in2), (model.conv3, model.in3),
             (model.deconv1, model.in4), (model.deconv2, model.in5)]
    for i in range(1, 6):
        res = getattr(model, f"res{i}")
        pairs += [(res.conv1, res.in1), (res.conv2, res.in2)]
        assert res.conv2.conv2d.out_channels == model.conv3.conv2d.out_channels  # residual coupling
        assert res.conv1.conv2d.in_channels == model.conv3.conv2d.out_channels
    for conv, norm in pairs:
        assert norm.weight.shape[0] == norm.bias.shape[0] == conv.conv2d.out_channels == norm.num_features
    assert model.conv1.conv2d.in_channels == 3
    assert model.deconv3.conv2d.out_channels == 3
    assert model.deconv1.conv2d.in_channels == model.conv3.conv2d.out_channels


@pytest.mark.parametrize("family", ["transformer_net", "transformer_net_stn", "adain", "vgg19"])
def test_zero_ratio_is_bit_identical(family):
    model = _model(family)
    inputs = example_inputs_for(model, 32)
    before = _run(model, inputs)
    pruned = prune_model(copy.deepcopy(model), PruneStage(ratio=0.0))
    assert pruned.current_spec() == model.current_spec()
    assert torch.equal(_run(pruned, inputs), before)


def test_half_prune_transformer_net_shapes():
    model = prune_model(_model("transformer_net"), PruneStage(ratio=0.5))
    spec = model.current_spec()
    assert (spec.conv1, spec.conv2, spec.trunk, spec.deconv1, spec.deconv2) == (16, 32, 64, 32, 16)
    assert spec.res_inner == [64] * 5
    _transformer_widths_consistent(model)
    assert model(torch.rand(1, 3, 40, 48)).shape == (1, 3, 40, 48)
    assert model.spec == spec


def test_instance_norm_gamma_counts_in_importance():
    """Channels whose InstanceNorm gamma is ~0 are the ones removed (torch-pruning alone ignores InstanceNorm)."""
    model = _model("transformer_net")
    with torch.no_grad():
        model.in1.weight[::2] = 1e-3  # conv1's even channels barely reach the output
        model.in1.weight[1::2] = 1.0
    prune_model(model, PruneStage(ratio=0.5))
    assert torch.all(model.in1.weight == 1.0)


def test_round_to_overrides_and_ignore():
    plain = prune_model(_model("transformer_net"), PruneStage(ratio=0.3)).current_spec()
    assert plain.conv1 % 8 != 0  # without round_to, 32 * 0.7 is not a multiple of 8

    rounded = prune_model(_model("transformer_net"), PruneStage(ratio=0.3, round_to=8)).current_spec()
    widths = [rounded.conv1, rounded.conv2, rounded.trunk, rounded.deconv1, rounded.deconv2, *rounded.res_inner]
    assert all(w % 8 == 0 for w in widths), widths

    config = PruneStage(ratio=0.5, overrides={"res*.conv1.conv2d": 0.75}, ignore=["conv1.conv2d", "deconv2*"])
    spec = prune_model(_model("transformer_net"), config).current_spec()
    assert spec.res_inner == [32] * 5
    assert (spec.conv1, spec.deconv2) == (32, 32)
    assert (spec.conv2, spec.trunk) == (32, 64)

    with pytest.raises(ValueError, match="matches no prunable layer"):
        prune_model(_model("transformer_net"), PruneStage(ignore=["nonexistent*"]))


def test_a_layer_name_beats_its_module_type_which_beats_the_global_ratio():
    """coremltools.optimize's precedence, whatever order the keys come in."""
    for overrides in ({"Conv2d": 0.75, "res*.conv1.conv2d": 0.25}, {"res*.conv1.conv2d": 0.25, "Conv2d": 0.75}):
        spec = prune_model(_model("transformer_net"), PruneStage(ratio=0.5, overrides=overrides)).current_spec()
        assert spec.res_inner == [96] * 5  # named: 128 * (1 - 0.25)
        assert spec.conv2 == 16  # by type: 64 * (1 - 0.75), not the global 0.5


def test_global_scope_and_iterative_steps_with_finetune():
    model = _model("transformer_net")
    before = sum(p.numel() for p in model.parameters())
    prune_model(model, PruneStage(ratio=0.5, scope="global"))
    _transformer_widths_consistent(model)
    assert sum(p.numel() for p in model.parameters()) < before

    calls = []
    stepped = prune_model(_model("transformer_net"), PruneStage(ratio=0.5, iterative_steps=3),
                          finetune=lambda m, step: calls.append((step, m.current_spec().trunk)))
    assert calls == [(0, int(128 * (1 - 0.5 / 3))), (1, int(128 * (1 - 1 / 3)))]  # a third, two thirds
    assert stepped.current_spec().trunk == 64


def test_stn_variant_prunes_and_runs():
    model = prune_model(_model("transformer_net_stn"), PruneStage(ratio=0.5))
    spec = model.current_spec()
    assert spec.stn == STNSpec(conv1=4, conv2=8, hidden=16)
    assert model.stn.localization[-1].out_features == 6
    _transformer_widths_consistent(model)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_adain_half_prune_keeps_io():
    model = prune_model(_model("adain"), PruneStage(ratio=0.5))
    spec = model.current_spec()
    assert spec.encoder == [32, 32, 64, 64, 128, 128, 128, 128, 256]
    assert model.encoder[0].weight.shape == (3, 3, 1, 1)
    assert model.decoder[-1].out_channels == 3
    assert model.decoder[1].in_channels == 256
    x = torch.rand(1, 3, 32, 32)
    assert model(x, x).shape == (1, 3, 32, 32)


RELOAD_SCRIPT = """
import sys
sys.modules["torch_pruning"] = None  # any import of torch-pruning now fails
import torch
from compressor.models import load_model
model = load_model(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(x), sys.argv[3])
"""


@pytest.mark.slow  # ~20-30 s on a shared 2-core machine
def test_pruned_model_reloads_without_torch_pruning(tmp_path):
    model = prune_model(_model("transformer_net_stn"), PruneStage(ratio=0.5, round_to=8))
    save_model(model, tmp_path / "pruned")
    x = torch.rand(1, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(tmp_path / "pruned"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), model(x))

    vgg = prune_model(_model("vgg19"), PruneStage(ratio=0.5, vgg_mode="project_taps"))
    reloaded = load_model(save_model(vgg, tmp_path / "vgg19"))
    assert torch.equal(_run(reloaded, x), _run(vgg, x))
    assert reloaded.state_dict().keys() == vgg.state_dict().keys()  # projections saved and rebuilt


def test_vgg_keep_taps_keeps_tap_widths():
    model = prune_model(_model("vgg19"), PruneStage(ratio=0.5))
    widths = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    # conv1_1 conv1_2 conv2_1 conv2_2 conv3_1 conv3_2 conv3_3 conv3_4 conv4_1: taps are 1_1, 2_1, 3_1, 4_1
    assert widths == [64, 32, 128, 64, 256, 128, 128, 128, 512]
    feats = model(torch.rand(1, 3, 32, 32))
    assert [feats[t].shape[1] for t in VGG_TAPS] == [64, 128, 256, 512]
    assert not model.projections

    named = prune_model(_model("vgg19"), PruneStage(ratio=0.5, ignore=["conv3_*"]))  # VGG layer names work too
    assert [m.out_channels for m in named.features if isinstance(m, nn.Conv2d)][4:8] == [256] * 4


def test_vgg_project_taps_builds_reembedding_projections():
    reference = _model("vgg19")
    model = prune_model(copy.deepcopy(reference), PruneStage(ratio=0.5, vgg_mode="project_taps"))
    assert model.current_spec().projections == {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512}
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        feats, ref = model(x), reference(x)
        for tap, width in model.spec.projections.items():
            assert feats[tap].shape[1] == width // 2
            assert model.projections[tap](feats[tap]).shape == ref[tap].shape
        # conv1_1 sees the image directly: its projection restores the kept channels exactly, zeros elsewhere.
        restored = model.projections["relu1_1"](feats["relu1_1"])
    kept = restored.abs().flatten(2).sum(-1)[0] > 0
    assert kept.sum() == 32
    assert torch.allclose(restored[:, kept], ref["relu1_1"][:, kept])

    unpruned = prune_model(_model("vgg19"), PruneStage(ratio=0.0, vgg_mode="project_taps"))
    assert not unpruned.projections and unpruned.current_spec().projections == {}


def test_prune_command_and_stage_meta(tmp_path):
    from styleslim.cli import app

    save_model(_model("transformer_net"), tmp_path / "teacher")
    result = CliRunner().invoke(app, ["prune", str(tmp_path / "teacher"), "-o", str(tmp_path / "pruned"),
                                      "--ratio", "0.5", "--round-to", "8", "--override", "res*.conv1.conv2d=0.75"])
    assert result.exit_code == 0, result.output
    assert "params" in result.output and "MACs" in result.output
    spec, meta = read_spec(tmp_path / "pruned")
    assert spec.res_inner == [32] * 5
    assert meta["after"]["macs"] < meta["before"]["macs"] and meta["after"]["widths"]["conv3.conv2d"] == 64

    bad = CliRunner().invoke(app, ["prune", str(tmp_path / "teacher"), "-o", str(tmp_path / "x"), "--ratio", "1.2"])
    assert bad.exit_code == 2 and "ratio" in bad.output


def test_prune_stage_fine_tunes_between_steps(tmp_path):
    from compressor.config import Recipe
    from styleslim.context import RunContext
    from styleslim.stages import prune_stage

    recipe = Recipe.model_validate({
        "name": "t", "loss_network": "random", "style_size": 32,
        "prune": {"ratio": 0.5, "iterative_steps": 2, "finetune_steps_between": 1},
        "distill": {"steps": 50, "batch_size": 1, "crop": 32},
    })
    ctx = RunContext(recipe=recipe, run_dir=tmp_path, progress=False)
    teacher = _model("transformer_net")
    save_model(teacher, ctx.stage_dir("model"))
    prune_stage(ctx)
    spec, meta = read_spec(ctx.stage_dir("prune"))
    assert spec.trunk == 64 and meta["prune"]["iterative_steps"] == 2 and "random" in meta["loss_network"]
    pruned = load_model(ctx.stage_dir("prune"))
    one_shot = prune_model(teacher, PruneStage(ratio=0.5))
    assert spec == one_shot.current_spec()
    assert not torch.equal(pruned.conv1.conv2d.weight, one_shot.conv1.conv2d.weight)  # fine-tuning changed weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned", "teacher"]  # no fine-tuning leftovers


def test_loss_rank_correlation_and_gatys_check():
    from compressor.data import load_image, sample_content_paths, sample_style_path
    from evaluation.lossnet import gatys_check, loss_rank_correlation

    reference = _model("vgg19")
    same = loss_rank_correlation(reference, reference, size=32)
    assert same["style_spearman"] == pytest.approx(1.0) and same["content_spearman"] == pytest.approx(1.0)
    pruned = prune_model(copy.deepcopy(reference), PruneStage(ratio=0.75))
    result = loss_rank_correlation(pruned, reference, size=32)
    # Measured: 0.998 (style) / 0.94 (content) for the 75%-pruned net; a VGG19 with other random weights,
    # the same architecture, ranks the same pairs at 0.89 / 0.85. Pruning must keep the ranking closer than that.
    unrelated = copy.deepcopy(reference)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in unrelated.features:
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.weight.std())
    control = loss_rank_correlation(unrelated, reference, size=32)
    assert result["style_spearman"] > 0.95 and result["content_spearman"] > 0.9
    assert result["style_spearman"] > control["style_spearman"] + 0.05
    assert result["content_spearman"] > control["content_spearman"] + 0.05
    assert result["content_layers"] == ["relu4_1"]  # relu4_2 not tapped: deepest common tap
    assert result["pairs"] == result["images"] * (result["images"] - 1) // 2

    content = load_image(sample_content_paths("eval")[0], size=32).unsqueeze(0)
    style = load_image(sample_style_path("starry_night"), size=32).unsqueeze(0)
    check = gatys_check(pruned, reference, content, style, steps=2)
    assert check["pruned"]["total"] > 0 and check["reference_run"]["total"] > 0
    assert math.isfinite(check["style_ratio"]) and math.isfinite(check["content_ratio"])
