"""Johnson et al. 2016 fast style transfer network, built from a width spec.

Layer names follow pytorch/examples fast_neural_style (``conv1.conv2d``,
``in1``, ``res1.conv1.conv2d``, ``deconv3.conv2d``) so its checkpoints load by
key. Input and output are float RGB in [0, 1]; the network itself works in the
0-255 range the reference implementation was trained in, so a pytorch/examples
checkpoint needs no weight surgery.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressor.models.spec import STNSpec, TransformerNetSpec


class ConvLayer(nn.Module):
    """Reflection padding followed by a convolution (padding kept outside the conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour upsampling then a convolution: avoids transposed-conv checkerboards."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, upsample: int | None = None):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, inner: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, inner, 3)
        self.in1 = nn.InstanceNorm2d(inner, affine=True)
        self.conv2 = ConvLayer(inner, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(self.relu(self.in1(self.conv1(x)))))


class SpatialTransformer(nn.Module):
    """Localisation net -> affine grid -> grid_sample, initialised to the identity warp."""

    def __init__(self, spec: STNSpec):
        super().__init__()
        self.localization = nn.Sequential(
            nn.Conv2d(3, spec.conv1, 7, stride=2, padding=3),
            nn.ReLU(),
            nn.Conv2d(spec.conv1, spec.conv2, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(spec.conv2, spec.hidden),
            nn.ReLU(),
            nn.Linear(spec.hidden, 6),
        )
        final = self.localization[-1]
        nn.init.zeros_(final.weight)
        with torch.no_grad():
            final.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.localization(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


class TransformerNet(nn.Module):
    def __init__(self, spec: TransformerNetSpec | None = None):
        super().__init__()
        spec = spec or TransformerNetSpec()
        if len(spec.res_inner) != 5:
            raise ValueError(f"TransformerNet needs 5 residual widths, spec has {len(spec.res_inner)}")
        self.spec = spec
        self.stn = SpatialTransformer(spec.stn) if spec.stn else None
        self.conv1 = ConvLayer(3, spec.conv1, 9)
        self.in1 = nn.InstanceNorm2d(spec.conv1, affine=True)
        self.conv2 = ConvLayer(spec.conv1, spec.conv2, 3, stride=2)
        self.in2 = nn.InstanceNorm2d(spec.conv2, affine=True)
        self.conv3 = ConvLayer(spec.conv2, spec.trunk, 3, stride=2)
        self.in3 = nn.InstanceNorm2d(spec.trunk, affine=True)
        for i, inner in enumerate(spec.res_inner, start=1):
            setattr(self, f"res{i}", ResidualBlock(spec.trunk, inner))
        self.deconv1 = UpsampleConvLayer(spec.trunk, spec.deconv1, 3, upsample=2)
        self.in4 = nn.InstanceNorm2d(spec.deconv1, affine=True)
        self.deconv2 = UpsampleConvLayer(spec.deconv1, spec.deconv2, 3, upsample=2)
        self.in5 = nn.InstanceNorm2d(spec.deconv2, affine=True)
        self.deconv3 = ConvLayer(spec.deconv2, 3, 9)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map RGB [0, 1] to stylised RGB (nominally [0, 1]; clamp when saving)."""
        if self.stn is not None:
            x = self.stn(x)
        y = x * 255.0
        y = self.relu(self.in1(self.conv1(y)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y) / 255.0

    def current_spec(self) -> TransformerNetSpec:
        """The spec of this module as it is now (after pruning, widths are read off the layers)."""
        stn = None
        if self.stn is not None:
            loc = self.stn.localization
            stn = STNSpec(conv1=loc[0].out_channels, conv2=loc[2].out_channels, hidden=loc[6].out_features)
        return TransformerNetSpec(
            style=self.spec.style,
            conv1=self.conv1.conv2d.out_channels,
            conv2=self.conv2.conv2d.out_channels,
            trunk=self.conv3.conv2d.out_channels,
            res_inner=[getattr(self, f"res{i}").conv1.conv2d.out_channels for i in range(1, 6)],
            deconv1=self.deconv1.conv2d.out_channels,
            deconv2=self.deconv2.conv2d.out_channels,
            stn=stn,
        )
