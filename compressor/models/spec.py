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


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    style: str | None = Field(None, description="Name of the style image the weights were trained on, if any.")


class STNSpec(BaseModel):
    """Localisation net of the optional spatial transformer in front of TransformerNet."""

    model_config = ConfigDict(extra="forbid")
    conv1: int = 8
    conv2: int = 16
    hidden: int = 32


class TransformerNetSpec(_Spec):
    """Johnson et al. 2016 TransformerNet widths.

    ``trunk`` is shared by conv3, every residual block's output and deconv1's
    input (the residual coupling); each residual block's inner width is free.
    """

    family: Literal["transformer_net"] = "transformer_net"
    conv1: int = 32
    conv2: int = 64
    trunk: int = 128
    res_inner: list[int] = Field(default_factory=lambda: [128] * 5)
    deconv1: int = 64
    deconv2: int = 32
    stn: STNSpec | None = None


class VGG19Spec(_Spec):
    """VGG19 ``features`` prefix up to the deepest tap, with ImageNet normalisation inside."""

    family: Literal["vgg19"] = "vgg19"
    widths: list[int] = Field(default_factory=lambda: [w for w in VGG19_CFG if w != "M"])
    taps: list[str] = Field(default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"])
    pooling: Literal["max", "avg"] = "max"
    projections: dict[str, int] = Field(
        default_factory=dict,
        description="Tap name -> original width, for pruned taps distilled through learned 1x1 projections.",
    )


class AdaINSpec(_Spec):
    """Huang & Belongie 2017: VGG19 encoder to relu4_1 and its mirrored decoder.

    ``encoder`` holds the 10 conv widths up to relu4_1 (conv1_1..conv4_1);
    ``decoder`` the 8 inner widths of the decoder (its last conv outputs RGB).
    """

    family: Literal["adain"] = "adain"
    encoder: list[int] = Field(default_factory=lambda: [64, 64, 128, 128, 256, 256, 256, 256, 512])
    decoder: list[int] = Field(default_factory=lambda: [256, 256, 256, 256, 128, 128, 64, 64])


class MultiStyleSpec(_Spec):
    """Dumoulin et al. 2017 multi-style network (TensorFlow's Android stylize demo).

    ``contract`` holds the 9x9 input conv and the two stride-2 convs; the last
    is the residual trunk, shared by every residual block's output (the
    residual coupling). ``res_inner`` are the residual blocks' inner widths,
    ``expand`` the two upsampling convs before the 9x9 RGB output conv.
    Every conv is followed by a conditional instance norm with gamma/beta of
    shape [n_styles, C].
    """

    family: Literal["multistyle"] = "multistyle"
    n_styles: int = 26
    contract: list[int] = Field(default_factory=lambda: [32, 32, 32])
    res_inner: list[int] = Field(default_factory=lambda: [32] * 6)
    expand: list[int] = Field(default_factory=lambda: [8, 4])
    eps: float = 1e-5


class ArbitrarySpec(_Spec):
    """Ghiasi et al. 2017 arbitrary-style transform network (Magenta).

    ``contract``: 9x9 conv and two stride-2 convs (bias, no norm); the last is
    the residual trunk. Residual and ``expand`` convs are followed by
    instance norms whose gamma/beta come from the ``style_dim`` style vector
    through dense layers; the 9x9 RGB output conv ends in a sigmoid.
    """

    family: Literal["arbitrary"] = "arbitrary"
    style_dim: int = 100
    contract: list[int] = Field(default_factory=lambda: [8, 16, 32])
    res_inner: list[int] = Field(default_factory=lambda: [32] * 5)
    expand: list[int] = Field(default_factory=lambda: [16, 8])
    eps: float = 1e-5


ModelSpec = Annotated[
    TransformerNetSpec | VGG19Spec | AdaINSpec | MultiStyleSpec | ArbitrarySpec, Field(discriminator="family")
]
