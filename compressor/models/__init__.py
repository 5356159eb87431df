"""Style-transfer networks, each built from a JSON-serialisable spec, each family registered once.

Adding a family = one new module under compressor/models/ (spec, nn.Module, hooks,
``register_family(...)``; see ``compressor.models.registry``) + one import line below.
"""

# The families: importing a family's module registers it. One line per family.
from compressor.models import transformer_net  # noqa: F401, I001
from compressor.models import vgg  # noqa: F401
from compressor.models import adain  # noqa: F401
from compressor.models import multistyle  # noqa: F401
from compressor.models import arbitrary  # noqa: F401
from compressor.models import edge_net  # noqa: F401

from compressor.models.adain import AdaINNet, AdaINSpec, load_adain
from compressor.models.arbitrary import ArbitrarySpec, ArbitraryStyleNet
from compressor.models.checkpoint import (
    CheckpointMismatch,
    current_spec,
    load_any,
    load_model,
    read_spec,
    save_model,
)
from compressor.models.edge_net import EdgeNet, EdgeNetSpec
from compressor.models.conditional_norm import SingleStyle
from compressor.models.multistyle import MultiStyleNet, MultiStyleSpec
from compressor.models.registry import Family, create_model, families, get_family, parse_spec, register_family
from compressor.models.transformer_net import STNSpec, TransformerNet, TransformerNetSpec, load_fast_neural_style
from compressor.models.vgg import VGG19LossNet, VGG19Spec, VGGWeightsUnavailable, load_vgg19

__all__ = [
    "AdaINNet",
    "AdaINSpec",
    "ArbitrarySpec",
    "ArbitraryStyleNet",
    "CheckpointMismatch",
    "EdgeNet",
    "EdgeNetSpec",
    "Family",
    "MultiStyleNet",
    "MultiStyleSpec",
    "STNSpec",
    "SingleStyle",
    "TransformerNet",
    "TransformerNetSpec",
    "VGG19LossNet",
    "VGG19Spec",
    "VGGWeightsUnavailable",
    "create_model",
    "current_spec",
    "families",
    "get_family",
    "load_adain",
    "load_any",
    "load_fast_neural_style",
    "load_model",
    "load_vgg19",
    "parse_spec",
    "read_spec",
    "register_family",
    "save_model",
]
