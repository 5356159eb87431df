"""AdaIN arbitrary style transfer (Huang & Belongie 2017).

Encoder and decoder use naoto0804/pytorch-AdaIN's ``nn.Sequential`` layouts
(index 0 of the encoder is the 1x1 conv that converted the original caffe BGR
0-255 VGG to RGB [0, 1] input), so ``vgg_normalised.pth`` and ``decoder.pth``
load key for key. Without those files the encoder can take torchvision's
ImageNet VGG19 convs, the 1x1 conv then doing the ImageNet normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor.config import TrainConfig
from compressor.data import BUNDLED_STYLES, load_image, sample_style_path
from compressor.images import fit_shortest
from compressor.losses import adain_style_loss, finish, mean_std, teacher_terms, tv_loss, uses_teacher
from compressor.models.checkpoint import load_weights, read_state_dict
from compressor.models.registry import Family, ForeignLoader, Objective, Width, register_family
from compressor.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG19LossNet


class AdaINSpec(BaseModel):
    """Huang & Belongie 2017: VGG19 encoder to relu4_1 and its mirrored decoder.

    ``encoder`` holds the 10 conv widths up to relu4_1 (conv1_1..conv4_1);
    ``decoder`` the 8 inner widths of the decoder (its last conv outputs RGB).
    """

    model_config = ConfigDict(extra="forbid")
    family: Literal["adain"] = "adain"
    style: str | None = Field(None, description="Name of the style image the weights were trained on, if any.")
    encoder: list[Width] = Field(default_factory=lambda: [64, 64, 128, 128, 256, 256, 256, 256, 512], min_length=9,
                                 max_length=9)
    decoder: list[Width] = Field(default_factory=lambda: [256, 256, 256, 256, 128, 128, 64, 64], min_length=8,
                                 max_length=8)

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


# ---------------------------------------------------------------- foreign checkpoints and initialisation


def load_adain(vgg_path: str | Path, decoder_path: str | Path) -> AdaINNet:
    """naoto0804/pytorch-AdaIN ``vgg_normalised.pth`` + ``decoder.pth`` as an AdaINNet."""
    vgg = read_state_dict(Path(vgg_path))
    decoder = read_state_dict(Path(decoder_path))
    model = AdaINNet(AdaINSpec(style=None))
    enc_keys = set(model.encoder.state_dict())
    load_weights(model.encoder, {k: v for k, v in vgg.items() if k in enc_keys}, str(vgg_path))
    load_weights(model.decoder, decoder, str(decoder_path))
    return model.eval()


def init_adain_encoder_from_vgg(model: AdaINNet, vgg: VGG19LossNet) -> None:
    """Copy a loaded VGG19 loss network's convs into the AdaIN encoder (its input conv then normalises)."""
    src = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    dst = [m for m in model.encoder if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    if len(src) < len(dst):
        raise ValueError(f"VGG19 has {len(src)} convs, the AdaIN encoder needs {len(dst)} (taps up to relu4_1)")
    with torch.no_grad():
        for s_conv, d_conv in zip(src, dst):
            d_conv.weight.copy_(s_conv.weight)
            d_conv.bias.copy_(s_conv.bias)
    model.set_imagenet_input_conv()


# ---------------------------------------------------------------- distillation


def bundled_style_images(size: int) -> list[torch.Tensor]:
    """The bundled paintings as (3, H, W) tensors whose shorter side is at least ``size``."""
    images = []
    for name in BUNDLED_STYLES:
        images.append(fit_shortest(load_image(sample_style_path(name), size=2 * size), size))
    return images


def _style_batch(images: list[torch.Tensor], n: int, crop: int) -> torch.Tensor:
    """``n`` random ``crop``-sized crops of random style images (draws from torch's RNG)."""
    crops = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), ()))]
        _, h, w = img.shape
        top, left = int(torch.randint(h - crop + 1, ())), int(torch.randint(w - crop + 1, ()))
        crops.append(img[:, top : top + crop, left : left + crop])
    return torch.stack(crops)


def adain_objective(
    config: TrainConfig,
    vgg: VGG19LossNet,
    style_images: list[torch.Tensor],
    teacher: AdaINNet | None = None,
) -> Objective:
    """AdaIN student (pruned decoder and/or encoder) on content crops and random style crops.

    AdaIN's own losses (relu4_1 content loss to the AdaIN target t, mean/std
    style loss) are judged by the teacher's encoder, or without a teacher by
    an encoder built from the reference VGG19: never by the compressed one.
    """
    judge = teacher if teacher is not None else _reference_adain(vgg)
    use_teacher = uses_teacher(config, teacher)

    def objective(student: nn.Module, content: torch.Tensor) -> dict[str, torch.Tensor]:
        style = _style_batch(style_images, content.shape[0], config.crop).to(content.device)
        output = student(content, style)
        with torch.no_grad():
            style_taps = judge.encode_taps(style)
            target = adaptive_instance_norm(judge.encode(content), style_taps["relu4_1"])
        out_taps = judge.encode_taps(output)
        terms = {
            "content": config.content_weight * F.mse_loss(out_taps["relu4_1"], target),
            "style": config.adain_style_weight * adain_style_loss(out_taps, style_taps),
            "tv": config.tv_weight * tv_loss(output),
        }
        if use_teacher:
            with torch.no_grad():
                teacher_out = teacher(content, style)
            terms.update(teacher_terms(config, vgg, output, teacher_out))
        return finish(terms)

    return objective


def _reference_adain(vgg: VGG19LossNet) -> AdaINNet:
    judge = AdaINNet().to(vgg.mean.device)
    init_adain_encoder_from_vgg(judge, vgg)
    return judge.eval().requires_grad_(False)


# ---------------------------------------------------------------- the family


class AdaINFamily(Family):
    """Arbitrary style: content and style images in, stylised image out."""

    name = "adain"
    spec = AdaINSpec
    module = AdaINNet
    role = "arbitrary_style"
    style_weight_key = "adain_style_weight"
    takes_alpha = True
    size_multiple = 8  # three poolings, three x2 upsamplings
    loaders = (
        ForeignLoader("pytorch-AdaIN vgg_normalised.pth + decoder.pth",
                      accepts=lambda path, companion: companion is not None,
                      load=lambda path, companion: load_adain(path, companion)),
    )

    def teacher(self, spec, loss_network, weights, allow_fallback):
        """The encoder comes from the reference loss network and stays frozen; only the decoder trains."""
        model = self.build(spec)
        init_adain_encoder_from_vgg(model, loss_network)
        model.encoder.requires_grad_(False)
        return model, "random init"

    def io_names(self, model: AdaINNet) -> tuple[list[str], list[str]]:
        return ["content", "style"], ["stylized"]

    def inputs(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if style is None:
            raise ValueError("AdaIN is arbitrary-style: it needs a style image")
        return batch, style.expand(batch.shape[0], -1, -1, -1)

    def stylizer(self, model: AdaINNet, style: torch.Tensor | None = None, alpha: float = 1.0):
        if style is None:
            raise ValueError("AdaIN is arbitrary-style; pass `style`")

        @torch.no_grad()
        def run(batch: torch.Tensor) -> torch.Tensor:
            return model(*self.inputs(batch, style), alpha=alpha)

        return run

    def layer_widths(self, spec: AdaINSpec) -> dict[str, int]:
        enc = {f"enc{i}": w for i, w in enumerate(spec.encoder, start=1)}
        return enc | {f"dec{i}": w for i, w in enumerate(spec.decoder, start=1)}

    def protected_layers(self, model: AdaINNet, config) -> list[nn.Module]:
        """The 1x1 input normalisation and the RGB output conv."""
        return [model.encoder[0], model.decoder[-1]]

    def objective(self, student, teacher, config, vgg, style_grams, style_images) -> Objective:
        """An encoder as wide as the teacher's stays frozen; style crops default to the bundled paintings."""
        if teacher is not None and student.spec.encoder == teacher.spec.encoder:
            student.encoder.requires_grad_(False)
        images = style_images if style_images is not None else bundled_style_images(config.crop)
        images = [img.to(vgg.mean.device) for img in images]
        return adain_objective(config, vgg, images, teacher)

    def checkpoint_modules(self, model: AdaINNet) -> list[nn.Module]:
        return [model.encoder, model.decoder]


register_family(AdaINFamily())
