"""The model-family registry: one ``Family`` per kind of network, instead of an if-chain in every stage.

Importing ``compressor.models.registry`` imports the ``compressor.models``
package first, which registers the built-in families.

In the style of timm's ``register_model`` / ``create_model``: each family
lives in ONE module under ``compressor/models/`` that holds its spec class,
its ``nn.Module``, its foreign-checkpoint loaders and its hooks, and ends
with ``register_family(MyFamily())``. ``compressor/models/__init__.py``
imports each family module once (one line per family); nothing else needs
editing. Pruning, distillation, export, quantization, evaluation and
stylize ask the family (``get_family(model)``) instead of asking "which
family is this?".

The Family API (subclass ``Family``; override only what differs)
-----------------------------------------------------------------
Declarations (class attributes):

- ``name``: the family's name, e.g. ``"transformer_net"``.
- ``spec``: a pydantic model with ``family: Literal[name] = name`` (and
  ``style: str | None``); ``extra="forbid"`` keeps spec.json strict.
  ``parse_spec`` is the discriminated union of all registered specs.
- ``module``: the ``nn.Module`` class. Its ``__init__(spec)`` builds the
  network, it keeps ``.spec`` and answers ``current_spec()`` with the widths
  read off its layers (so a pruned model describes itself and reloads
  without torch-pruning).
- ``role``: ``"style_transformer"`` (image -> stylised image, one style, learnt
  through Gram losses), ``"arbitrary_style"`` (content + style image ->
  stylised image) or ``"loss_network"`` (image -> dict of feature taps).
- ``loaders``: ``ForeignLoader``s for checkpoints of other projects.
- ``style_weight_key``: the ``TrainConfig`` field that weighs its style loss.
- ``size_multiple``: image sides must be multiples of this for the output to have the input's size
  (stylize reflect-pads to it and crops back).
- ``rewrites``: name -> in-place module rewrite (returns how many modules it
  replaced) for export rewrites that need this family's module classes; the
  generic ones (keyed on torch module types) live in ``exports.rewrites``.
  ``format_rewrites``: extra rewrite names per export format.
- ``style_bank``: True for networks holding several styles chosen by style
  weights (multistyle); their ``stylizer`` takes ``style_weights`` too.

Hooks (methods; defaults suit a one-input, RGB-output image-to-image net):

- ``build(spec)``; ``teacher(spec, loss_network, weights, allow_fallback)``:
  a fresh teacher for a recipe's model stage and where its weights came from.
- ``io_names(model)``: graph input and output names (exports, parity).
- ``inputs(batch, style)``: the tensors the network takes for an image batch
  (evaluation, the inputs fed to an exported artifact's runner).
- ``example_inputs(model, size, device)``: dummy inputs for graph tracing.
- ``stylizer(model, style, alpha)``: batch -> stylised batch (stylize,
  previews); a loss network refuses.
- ``layer_widths(spec)``: per-layer widths for reports.
- Pruning: ``protected_layers(model, config)`` (torch-pruning's
  ``ignored_layers``: output channels fixed by the model's contract),
  ``layer_aliases(model)`` (extra names for prunable layers, e.g.
  ``conv3_1``), ``customized_pruners(model)`` (torch-pruning's
  ``customized_pruners`` for layers it cannot prune itself),
  ``before_prune(model, config, finetune)`` -> state and
  ``after_prune(model, config, state, kept)`` (e.g. VGG19 tap projections;
  ``kept`` maps module names to the original output channels kept).
- Distillation: ``objective(student, teacher, config, vgg, style_grams,
  style_images)`` -> ``Objective`` (student, batch) -> loss terms with
  ``"total"``; ``checkpoint_modules(model)``: modules recomputed in backward
  under ``grad_checkpointing`` (``nn.Sequential`` ones in segments);
  ``trunk_ends(model)`` (where its residual trunk starts and ends, for
  ``trunk_weight`` distillation), ``residual_trunk(teacher)`` (its residual blocks as tensors),
  ``output_layers(teacher)`` (its RGB conv and the norms around it, if it ends so) and
  ``graft(student, trunk, output_layers)`` (a student starting from them: ``init: teacher_trunk``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union

import torch
from pydantic import BaseModel, Field, TypeAdapter
from torch import nn

Role = Literal["style_transformer", "arbitrary_style", "loss_network"]
Objective = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]
# One residual block of a teacher, for grafting into a student: (conv weight, norm gamma, norm beta) of its two
# conv + instance-norm layers, in order.
ResidualWeights = tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class OutputLayers(NamedTuple):
    """A teacher's last layers, for a student's own to start from: its RGB conv's weight, and the (gamma, beta) of
    the norm on that conv's input and of the one on its output, [C] or [n_styles, C] each."""

    rgb_weight: torch.Tensor
    input_norm: tuple[torch.Tensor, torch.Tensor]
    output_norm: tuple[torch.Tensor, torch.Tensor]

Rewrite = Callable[[nn.Module], int]
# A channel width in a spec: at least 1, and bounded so a typo (100000) is refused instead of allocating gigabytes.
MAX_WIDTH = 4096
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


@dataclass(frozen=True)
class ForeignLoader:
    """A checkpoint format of another project: ``load(path, companion)`` -> model, if ``accepts(path, companion)``.

    ``companion`` is a second file some formats need (AdaIN: the decoder next to the encoder).
    """

    name: str
    accepts: Callable[[Path, Path | None], bool]
    load: Callable[[Path, Path | None], nn.Module]


def replace_modules(model: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> int:
    """Swap every submodule for which ``make`` returns a replacement (in place); returns how many."""
    swaps = [(name, new) for name, m in model.named_modules() if name and (new := make(m)) is not None]
    for name, new in swaps:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
    return len(swaps)


class Family:
    """One model family; see the module docstring for every declaration and hook."""

    name: ClassVar[str]
    spec: ClassVar[type[BaseModel]]
    module: ClassVar[type[nn.Module]]
    role: ClassVar[Role]
    loaders: ClassVar[tuple[ForeignLoader, ...]] = ()
    style_weight_key: ClassVar[str] = "style_weight"
    rewrites: ClassVar[dict[str, Rewrite]] = {}
    format_rewrites: ClassVar[dict[str, tuple[str, ...]]] = {}
    size_multiple: ClassVar[int] = 1
    style_bank: ClassVar[bool] = False  # several styles in one network: stylizer(..., style_weights="3:0.5,12:0.5")
    style_losses: ClassVar[bool] = False  # its objective adds Gram style losses against one style image
    takes_alpha: ClassVar[bool] = False  # stylizer's alpha blends content (0) to style (1)

    # ---------------------------------------------------------------- building

    def build(self, spec: BaseModel) -> nn.Module:
        return self.module(spec)

    def teacher(self, spec: BaseModel, loss_network: nn.Module, weights: str, allow_fallback: bool
                ) -> tuple[nn.Module, str]:
        """A fresh teacher for the recipe's model stage, and the source of its weights (for the meta)."""
        return self.build(spec), "random init"

    # ---------------------------------------------------------------- calling

    def io_names(self, model: nn.Module) -> tuple[list[str], list[str]]:
        return ["image"], ["stylized"]

    def inputs(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """What the network takes for an image batch (``style``: a (1, 3, H, W) style image, if the role needs one)."""
        return (batch,)

    def example_inputs(self, model: nn.Module, size: int = 32, device: torch.device | str = "cpu"
                       ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Random inputs for graph tracing: a tensor for one-input networks, else a tuple."""
        xs = tuple(torch.rand(1, 3, size, size, device=device) for _ in self.io_names(model)[0])
        return xs[0] if len(xs) == 1 else xs

    def stylizer(self, model: nn.Module, style: torch.Tensor | None = None, alpha: float = 1.0
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Batch in [0, 1] -> stylised batch."""
        if self.role == "loss_network":
            raise ValueError(f"a {self.name} loss network does not stylise images")
        if self.role == "arbitrary_style" and style is None:
            raise ValueError(f"{self.name} is arbitrary-style; pass `style`")

        @torch.no_grad()
        def run(batch: torch.Tensor) -> torch.Tensor:
            return model(*self.inputs(batch, style))

        return run

    def n_styles(self, model: nn.Module) -> int:
        """How many styles ``model`` holds (a multi-style network's stylizer takes ``style_weights``)."""
        return 1

    def select_style(self, model: nn.Module, style_weights: str) -> nn.Module:
        """The single-style network ``model`` computes for one style (or blend), e.g. ``"19"``."""
        raise ValueError(f"a {self.name} model holds one style; select_style applies to multi-style networks")

    def style_mix(self, model: nn.Module, style_weights: str) -> torch.Tensor:
        """The style input ``inputs`` takes for one of the model's styles (or a blend), e.g. ``"19"``."""
        raise ValueError(f"a {self.name} model has no numbered styles; style weights apply to multi-style networks")

    def layer_widths(self, spec: BaseModel) -> dict[str, int]:
        """Output width of every conv / linear layer, by module path (reports plot them)."""
        model = self.build(spec)
        return {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    # ---------------------------------------------------------------- pruning

    def protected_layers(self, model: nn.Module, config: Any) -> list[nn.Module]:
        """Layers whose output channels the model's contract fixes; default: the convs that produce RGB."""
        return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 3]

    def layer_aliases(self, model: nn.Module) -> dict[str, nn.Module]:
        return {}

    def customized_pruners(self, model: nn.Module) -> dict[type, Any]:
        """torch-pruning ``customized_pruners``: module type -> ``BasePruningFunc`` for layers it cannot prune."""
        return {}

    def before_prune(self, model: nn.Module, config: Any, finetune: bool) -> Any:
        """Check the request and remember what ``after_prune`` needs; raise ValueError to refuse."""
        return None

    def after_prune(self, model: nn.Module, config: Any, state: Any, kept: dict[str, list[int]]) -> None:
        """Adjust the pruned model (it is then re-described through ``current_spec()``)."""

    # ---------------------------------------------------------------- distillation

    def objective(self, student: nn.Module, teacher: nn.Module | None, config: Any, vgg: nn.Module,
                  style_grams: dict[str, torch.Tensor] | None, style_images: list[torch.Tensor] | None
                  ) -> Objective:
        raise TypeError(f"the {self.name} family declares no distillation objective")

    def checkpoint_modules(self, model: nn.Module) -> list[nn.Module]:
        return []

    def trunk_ends(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The first module of the residual trunk and the first one after it: their inputs are the trunk's input
        and output (what ``trunk_weight`` distillation compares between student and teacher)."""
        raise TypeError(f"the {self.name} family has no residual trunk to compare")

    def residual_trunk(self, model: nn.Module) -> list[ResidualWeights]:
        """A teacher's residual blocks as plain tensors (what a student's ``graft`` starts from)."""
        raise TypeError(f"the {self.name} family has no residual trunk to share with a student")

    def output_layers(self, model: nn.Module) -> OutputLayers | None:
        """A teacher's RGB conv and the norms around it as plain tensors; None when it does not end so."""
        return None

    def graft(self, student: nn.Module, trunk: list[ResidualWeights], output_layers: OutputLayers | None = None) -> int:
        """Start ``student``'s residual blocks as a teacher's ``residual_trunk`` (and its last layers as the
        teacher's ``output_layers``, where both have them); returns how many residual blocks."""
        raise TypeError(f"a {self.name} student cannot start from a teacher's residual trunk")


_FAMILIES: dict[str, Family] = {}
_ADAPTER: TypeAdapter | None = None


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (once per name); returns it."""
    global _ADAPTER
    if family.name in _FAMILIES and type(_FAMILIES[family.name]) is not type(family):
        raise ValueError(f"model family {family.name!r} is already registered")
    fields = getattr(family.spec, "model_fields", {})
    if "family" not in fields or fields["family"].default != family.name:
        raise ValueError(f"{family.spec.__name__} needs `family: Literal[{family.name!r}] = {family.name!r}`")
    _FAMILIES[family.name] = family
    _ADAPTER = None
    return family


def families() -> list[Family]:
    return list(_FAMILIES.values())


def family_names() -> list[str]:
    return list(_FAMILIES)


def get_family(what: str | BaseModel | nn.Module) -> Family:
    """The family of a name, a spec or a model (a model answers through its class)."""
    if isinstance(what, str):
        name = what
    elif isinstance(what, BaseModel):
        name = getattr(what, "family", None)
    else:
        found = [f for f in _FAMILIES.values() if isinstance(what, f.module)]
        if not found:
            raise TypeError(f"{type(what).__name__} belongs to no registered model family "
                            f"({', '.join(_FAMILIES)})")
        return found[0]
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def _adapter() -> TypeAdapter:
    global _ADAPTER
    if _ADAPTER is None:
        specs = tuple(f.spec for f in _FAMILIES.values())
        union = specs[0] if len(specs) == 1 else Annotated[Union[specs], Field(discriminator="family")]  # noqa: UP007
        _ADAPTER = TypeAdapter(union)
    return _ADAPTER


def parse_spec(data: dict[str, Any] | str) -> BaseModel:
    """A spec from its dict or JSON, validated against the registered families' spec classes."""
    if isinstance(data, str):
        return _adapter().validate_json(data)
    return _adapter().validate_python(data)


def create_model(spec: BaseModel | dict[str, Any]) -> nn.Module:
    """A freshly initialised model for ``spec`` (a spec object or its dict)."""
    if not isinstance(spec, BaseModel):
        spec = parse_spec(spec)
    return get_family(spec).build(spec)
