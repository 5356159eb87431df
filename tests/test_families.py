"""The contract every registered family keeps: build, save, load, prune, export, stylize (timm's tests over every
model, here over ``styleslim.list_models()``). Small specs keep it fast; a new family is covered by registering."""

from __future__ import annotations

import re

import pytest
import torch

import styleslim
from compressor.models import families, get_family, load_model
from exports.backends.onnxruntime import conv_layers
from exports.runtime import load_runner

SMALL = {  # the narrowest spec of each family that keeps its structure
    "transformer_net": {"conv1": 8, "conv2": 16, "trunk": 16, "res_inner": [16] * 5, "deconv1": 16, "deconv2": 8},
    "vgg19": {"widths": [8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32, 32, 32, 32]},
    "adain": {},
    "multistyle": {"n_styles": 3, "contract": [8, 8, 16], "res_inner": [16] * 2, "expand": [8, 4]},
    "arbitrary": {},
    "edge_net": {"stem": 16, "trunk": 16, "blocks": 2},
}
SIZE = 64
# The package's own families (a test may register a throwaway one meanwhile).
PACKAGED = [f.name for f in families() if type(f).__module__.startswith("compressor.models.")]
# A family's other shapes that change its graph inputs: an edge student holding several styles takes style weights.
VARIANTS = {"edge_net, 3 styles": ("edge_net", {"unshuffle": 2, "down": 1, "stem": 16, "trunk": 16, "blocks": 2,
                                                "block": "norm", "norm": "instance", "n_styles": 3, "out_norm": True,
                                                "up_norm": True})}


def test_every_family_has_a_small_spec_here():
    assert set(SMALL) == set(PACKAGED) and set(PACKAGED) <= set(styleslim.list_models())


@pytest.fixture(params=[*PACKAGED, *VARIANTS])
def built(request) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    family, spec = VARIANTS.get(request.param, (request.param, SMALL.get(request.param)))
    return request.param, styleslim.create_model(family, **spec).eval()


def _run(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs)
    return out if isinstance(out, torch.Tensor) else torch.cat([v.flatten() for v in out.values()])


def test_save_load_prune_export_stylize(built, tmp_path):
    name, model = built
    family = get_family(model)
    example = family.example_inputs(model, SIZE)
    inputs = example if isinstance(example, tuple) else (example,)
    folder = styleslim.save_model(model, tmp_path / "model")
    again = load_model(folder).eval()
    assert again.current_spec() == model.current_spec()
    torch.testing.assert_close(_run(again, inputs), _run(model, inputs))

    pruned = styleslim.prune(model, ratio=0.5)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pruned) < count(model), f"{name}: pruning removed nothing"
    assert load_model(styleslim.save_model(pruned, tmp_path / "pruned")).current_spec() == pruned.current_spec()

    artifact = styleslim.export(pruned, "onnx", size=SIZE, out=tmp_path / "onnx")
    assert artifact.manifest["parity"]["passed"], artifact.manifest["parity"]
    assert [i["name"] for i in artifact.manifest["inputs"]] == load_runner(artifact.path).input_names
    # keep-float globs and mixed precision name convs by module: the graph's names must be the model's (a module
    # called twice, AdaIN's encoder on content and style, gets the exporter's _1 on its second call)
    convs = {n for n, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)}
    named = {n if n in convs else re.sub(r"_\d+$", "", n) for n in conv_layers(artifact.path).values()}
    assert named <= convs, sorted(named - convs)

    if family.role != "loss_network":
        style = "starry_night" if family.role == "arbitrary_style" else None
        picture = styleslim.stylize(pruned, torch.rand(1, 3, SIZE, SIZE), style=style)
        assert picture.shape == (1, 3, SIZE, SIZE) and torch.isfinite(picture).all()
