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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


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
