"""JSON-serialisable architecture specs.

A model is fully described by its spec: family plus per-layer channel widths.
A pruned model is therefore just another spec with narrower widths, and it
reloads without torch-pruning.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# torchvision's VGG19 configuration "E": conv widths, "M" marks a pooling layer.
VGG19_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
]
VGG19_CONV_NAMES: list[str] = [
    f"{block}_{i}" for block, n in (("1", 2), ("2", 2), ("3", 4), ("4", 4), ("5", 4)) for i in range(1, n + 1)
]


# Channel widths: at least 1, and bounded so a typo (100000) is refused instead of allocating gigabytes.
MAX_WIDTH = 4096
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    style: str | None = Field(None, description="Name of the style image the weights were trained on, if any.")


class STNSpec(BaseModel):
    """Localisation net of the optional spatial transformer in front of TransformerNet."""

    model_config = ConfigDict(extra="forbid")
    conv1: Width = 8
    conv2: Width = 16
    hidden: Width = 32


class TransformerNetSpec(_Spec):
    """Johnson et al. 2016 TransformerNet widths.

    ``trunk`` is shared by conv3, every residual block's output and deconv1's
    input (the residual coupling); each residual block's inner width is free.
    """

    family: Literal["transformer_net"] = "transformer_net"
    conv1: Width = 32
    conv2: Width = 64
    trunk: Width = 128
    res_inner: list[Width] = Field(default_factory=lambda: [128] * 5, min_length=5, max_length=5)
    deconv1: Width = 64
    deconv2: Width = 32
    stn: STNSpec | None = None


class VGG19Spec(_Spec):
    """VGG19 ``features`` prefix up to the deepest tap, with ImageNet normalisation inside."""

    family: Literal["vgg19"] = "vgg19"
    widths: list[Width] = Field(default_factory=lambda: [w for w in VGG19_CFG if w != "M"], min_length=16,
                                max_length=16)
    taps: list[str] = Field(default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"])
    pooling: Literal["max", "avg"] = "max"
    projections: dict[str, Width] = Field(
        default_factory=dict,
        description="Tap name -> original width, for pruned taps distilled through learned 1x1 projections.",
    )


class AdaINSpec(_Spec):
    """Huang & Belongie 2017: VGG19 encoder to relu4_1 and its mirrored decoder.

    ``encoder`` holds the 10 conv widths up to relu4_1 (conv1_1..conv4_1);
    ``decoder`` the 8 inner widths of the decoder (its last conv outputs RGB).
    """

    family: Literal["adain"] = "adain"
    encoder: list[Width] = Field(default_factory=lambda: [64, 64, 128, 128, 256, 256, 256, 256, 512], min_length=9,
                                 max_length=9)
    decoder: list[Width] = Field(default_factory=lambda: [256, 256, 256, 256, 128, 128, 64, 64], min_length=8,
                                 max_length=8)


ModelSpec = Annotated[TransformerNetSpec | VGG19Spec | AdaINSpec, Field(discriminator="family")]
