"""AdaIN arbitrary style transfer (Huang & Belongie 2017).

Encoder and decoder use naoto0804/pytorch-AdaIN's ``nn.Sequential`` layouts
(index 0 of the encoder is the 1x1 conv that converted the original caffe BGR
0-255 VGG to RGB [0, 1] input), so ``vgg_normalised.pth`` and ``decoder.pth``
load key for key. Without those files the encoder can take torchvision's
ImageNet VGG19 convs, the 1x1 conv then doing the ImageNet normalisation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function_unary

from compressor.models.spec import AdaINSpec
from compressor.models.vgg import IMAGENET_MEAN, IMAGENET_STD

# Encoder pooling positions: after the 2nd, 4th and 8th conv (relu1_2, relu2_2, relu3_4).
_POOL_AFTER = {2, 4, 8}
# Decoder: nearest x2 upsampling after the 1st, 5th and 7th conv (mirror of the encoder).
_UPSAMPLE_AFTER = {1, 5, 7}
ENCODER_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
_TAP_AT_CONV = {1: "relu1_1", 3: "relu2_1", 5: "relu3_1", 9: "relu4_1"}


def build_encoder(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
    in_ch = 3
    for i, out_ch in enumerate(widths, start=1):
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3), nn.ReLU()]
        if i in _POOL_AFTER:
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        in_ch = out_ch
    return nn.Sequential(*layers)


def build_decoder(in_channels: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = in_channels
    for i, out_ch in enumerate(widths, start=1):
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3), nn.ReLU()]
        if i in _UPSAMPLE_AFTER:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        in_ch = out_ch
    layers += [nn.ReflectionPad2d(1), nn.Conv2d(in_ch, 3, 3)]
    return nn.Sequential(*layers)


def mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel spatial mean and std, shaped (N, C, 1, 1).

    Overridable through ``torch.overrides`` so tiled inference can give it a thumbnail's statistics.
    """
    if has_torch_function_unary(feat):
        return handle_torch_function(mean_std, (feat,), feat, eps=eps)
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1)
    return flat.mean(-1).view(n, c, 1, 1), (flat.var(-1, unbiased=True) + eps).sqrt().view(n, c, 1, 1)


def adaptive_instance_norm(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Give the content features the channel-wise mean and std of the style features."""
    c_mean, c_std = mean_std(content)
    s_mean, s_std = mean_std(style)
    return (content - c_mean) / c_std * s_std + s_mean


class AdaINNet(nn.Module):
    def __init__(self, spec: AdaINSpec | None = None):
        super().__init__()
        spec = spec or AdaINSpec()
        if len(spec.encoder) != 9 or len(spec.decoder) != 8:
            raise ValueError("AdaIN spec needs 9 encoder widths (conv1_1..conv4_1) and 8 decoder widths")
        self.spec = spec
        self.encoder = build_encoder(spec.encoder)
        self.decoder = build_decoder(spec.encoder[-1], spec.decoder)
        self.set_imagenet_input_conv()

    def set_imagenet_input_conv(self) -> None:
        """Make the 1x1 input conv perform ImageNet normalisation of RGB [0, 1]."""
        with torch.no_grad():
            self.encoder[0].weight.copy_(torch.diag(1.0 / torch.tensor(IMAGENET_STD)).view(3, 3, 1, 1))
            self.encoder[0].bias.copy_(-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))

    def encode_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """relu1_1 .. relu4_1 features (AdaIN's style loss layers)."""
        out: dict[str, torch.Tensor] = {}
        conv_index = 0
        for layer in self.encoder:
            x = layer(x)
            if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3):
                conv_index += 1
            elif isinstance(layer, nn.ReLU) and conv_index in _TAP_AT_CONV:
                out[_TAP_AT_CONV[conv_index]] = x
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """Stylise RGB [0, 1] ``content`` with ``style``; ``alpha`` blends content (0) to full style (1)."""
        c = self.encode(content)
        t = adaptive_instance_norm(c, self.encode(style))
        t = alpha * t + (1.0 - alpha) * c
        return self.decoder(t)

    def current_spec(self) -> AdaINSpec:
        enc = [m.out_channels for m in self.encoder if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        dec = [m.out_channels for m in self.decoder if isinstance(m, nn.Conv2d)][:-1]
        return self.spec.model_copy(update={"encoder": enc, "decoder": dec})
