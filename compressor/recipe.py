"""The YAML recipe: a validated list of stages, each optional.

Unknown keys are rejected and every error names its key path, e.g.
``prune.ratio: Input should be less than 1``. ``--set prune.ratio=0.75``
overrides work on the raw YAML before validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compressor.distill import TrainConfig
from compressor.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelStage(_Strict):
    """The teacher: an existing model folder / foreign checkpoint, or a freshly built (and briefly trained) one."""

    family: Literal["transformer_net", "vgg19", "adain"] = "transformer_net"
    path: str | None = Field(None, description="Model folder (spec.json), or a foreign .pth checkpoint.")
    adain_decoder: str | None = Field(None, description="AdaIN decoder.pth (with path = vgg_normalised.pth).")
    spec: dict[str, Any] = Field(default_factory=dict, description="Overrides of the family's default spec.")
    train: TrainConfig | None = Field(None, description="Train the teacher briefly before compressing it.")


class PruneStage(_Strict):
    """L1 structured channel pruning (compressor.prune); layer names are module paths, VGG convs also ``conv3_1``."""

    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="Fraction of channels to remove.")
    scope: Literal["local", "global"] = Field("local", description="local: ratio per layer; global: one ranking.")
    overrides: dict[str, Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default_factory=dict, description="Layer-name glob -> ratio."
    )
    ignore: list[str] = Field(default_factory=list, description="Layer-name globs never pruned.")
    round_to: int | None = Field(None, ge=1)
    iterative_steps: int = Field(1, ge=1)
    finetune_steps_between: int = Field(0, ge=0, description="Fine-tuning steps between iterative steps.")
    vgg_mode: Literal["keep_taps", "project_taps"] = "keep_taps"


class DistillStage(TrainConfig):
    """The pruned student (or a copy of the teacher) learns back from the teacher.

    TransformerNet / AdaIN: output L1 + perceptual terms on top of their style losses; VGG19: tap MSE
    (``feature_weight``). Output/perceptual weights 0 is plain fine-tuning.
    """

    output_weight: float = Field(1.0, ge=0)
    perceptual_weight: float = Field(1.0, ge=0)


class QuantizeStage(_Strict):
    """PTQ or QAT per runtime; artifacts keep float I/O semantics and are parity-checked against the fp32 model."""

    runtimes: list[Literal["onnx", "tflite", "coreml"]] = Field(default_factory=lambda: ["onnx"])
    mode: Literal["static", "dynamic", "fp16", "weight-only", "qat"] = "static"
    calibration: str = Field("samples", description="Folder of calibration images, or 'samples' (never eval images).")
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    keep_float: list[str] = Field(default_factory=list, description="Conv module-name globs kept in float.")
    max_style_increase_pct: float | None = Field(
        None, ge=0, description="Mixed precision: keep the most sensitive convs float until style loss rises at most this."
    )
    size: int = Field(256, ge=16, description="Square input side of the quantized artifacts.")
    coreml_palettize_bits: list[Literal[4, 6]] = Field(
        default_factory=lambda: [6, 4], description="Core ML k-means palettization variants (besides int8 weights)."
    )
    qat: TrainConfig | None = Field(None, description="QAT fine-tuning settings (mode qat); None = built-in defaults.")


class ExportStage(_Strict):
    """Float artifacts of the newest model, each verified on its runtime (int8 ones come from quantize)."""

    formats: list[Literal["onnx", "tflite", "coreml"]] = Field(default_factory=lambda: ["onnx"])
    precision: Literal["fp32", "fp16"] | None = Field(
        None, description="None: each format's default (ONNX/TFLite fp32, Core ML fp16)."
    )
    size: int = Field(256, ge=16, description="Square input side of the exported model.")
    layout: Literal["nchw", "nhwc"] = "nchw"


class EvaluateStage(_Strict):
    """Every variant of the run x every runtime -> report.json/md/html (see the README, "Evaluation and reports")."""

    images: str = Field("samples", description="Folder of evaluation images, or 'samples' (held-out set).")
    size: int = Field(256, ge=16, description="Evaluation resolution (side of the centre square crop).")
    latency_sizes: list[int] = Field(default_factory=lambda: [256], min_length=1, description="Square input sides timed.")
    latency_runs: int = Field(10, ge=3, description="Timed runs per variant and size, after warm-up.")
    warmup: int = Field(2, ge=0, description="Untimed runs per variant before timing.")
    threads: int = Field(2, ge=1, description="Intra-op threads for every runtime that accepts a thread count.")
    memory: bool = Field(True, description="Measure peak RSS of one inference per variant in a fresh process.")


class Recipe(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    style: str = Field("starry_night", description="Style image path, or a bundled style name.")
    style_size: int = Field(256, ge=16)
    content: str = Field("samples", description="Folder of training content images, or 'samples'.")
    loss_network: str = Field("imagenet", description="imagenet | random | path to VGG19 weights.")
    allow_random_loss_network: bool = Field(True, description="Fall back (loudly) to a seeded random VGG19.")
    model: ModelStage = Field(default_factory=ModelStage)
    prune: PruneStage | None = None
    distill: DistillStage | None = None
    quantize: QuantizeStage | None = None
    export: ExportStage | None = None
    evaluate: EvaluateStage | None = None


class RecipeError(UserError):
    """A recipe that does not validate; the message names the file and every bad key."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__("", message, hint)


MAX_RECIPE_BYTES = 1 << 20
MAX_NODES = 10_000  # a recipe has a few hundred values; a billion-laughs alias bomb expands to billions


class _LimitedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases would expand it past MAX_NODES values."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise yaml.YAMLError(f"expands to more than {MAX_NODES:,} values through aliases (*name); "
                                 "refused as a YAML bomb")
        return node


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """Values in ``node`` with every alias expanded, counted without expanding (shared nodes memoised)."""
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = MAX_NODES + 1  # a node inside itself (recursive alias) counts as too big
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    else:
        size = 1
    seen[id(node)] = size
    return size


def safe_yaml(text: str) -> Any:
    """Parse YAML safely: no Python tags, no alias bombs."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The first line of a YAML error plus where it is, e.g. 'found unknown tag !!python/object (line 2)'."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML) to raw recipe data."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item}: expected KEY.PATH=VALUE, e.g. --set prune.ratio=0.75")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item}: {part} is not a section")
        try:
            node[leaf] = safe_yaml(raw)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item}: not a plain YAML value ({_yaml_problem(exc)})") from None
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: {path.stat().st_size:,} bytes is too big for a recipe "
                              f"(at most {MAX_RECIPE_BYTES:,})")
        data = safe_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a folder, not a recipe file") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of stages, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{path}: invalid recipe:\n{format_errors(exc)}") from None


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            model = _model_at(err["loc"][:-1])
            if model is not None:
                msg += f"; allowed keys: {', '.join(model.model_fields)}"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found at a key path of Recipe (for listing allowed keys)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model
