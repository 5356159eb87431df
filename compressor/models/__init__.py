"""Style-transfer networks, each built from a JSON-serialisable spec."""

from compressor.models.adain import AdaINNet
from compressor.models.arbitrary import ArbitraryStyleNet
from compressor.models.checkpoint import (
    CheckpointMismatch,
    build_model,
    current_spec,
    load_adain,
    load_fast_neural_style,
    load_model,
    parse_spec,
    read_spec,
    save_model,
)
from compressor.models.multistyle import MultiStyleNet, SingleStyle
from compressor.models.spec import (
    AdaINSpec,
    ArbitrarySpec,
    ModelSpec,
    MultiStyleSpec,
    STNSpec,
    TransformerNetSpec,
    VGG19Spec,
)
from compressor.models.transformer_net import TransformerNet
from compressor.models.vgg import VGG19LossNet, VGGWeightsUnavailable, load_vgg19

__all__ = [
    "AdaINNet",
    "AdaINSpec",
    "ArbitrarySpec",
    "ArbitraryStyleNet",
    "CheckpointMismatch",
    "ModelSpec",
    "MultiStyleNet",
    "MultiStyleSpec",
    "STNSpec",
    "SingleStyle",
    "TransformerNet",
    "TransformerNetSpec",
    "VGG19LossNet",
    "VGG19Spec",
    "VGGWeightsUnavailable",
    "build_model",
    "current_spec",
    "load_adain",
    "load_fast_neural_style",
    "load_model",
    "load_vgg19",
    "parse_spec",
    "read_spec",
    "save_model",
]
