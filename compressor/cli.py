"""The ``styleslim`` command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor import __version__

app = typer.Typer(help="Compress neural style transfer models and ship them to phones and edge devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"styleslim {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


LossNetOpt = Annotated[
    str, typer.Option("--loss-network", help="VGG19 weights: imagenet | random | path to a weights file.")
]
StrictOpt = Annotated[
    bool, typer.Option("--strict-loss-network", help="Fail instead of falling back to a random VGG19.")
]


def _loss_network(weights: str, strict: bool):
    from compressor.models import VGGWeightsUnavailable, load_vgg19

    try:
        vgg = load_vgg19(weights, allow_fallback=not strict)
    except (VGGWeightsUnavailable, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.secho(f"loss network: VGG19 {vgg.weights_source}", fg=typer.colors.YELLOW if "random" in
                vgg.weights_source else typer.colors.GREEN, err=True)
    return vgg


@app.command()
def train(
    style: Annotated[str, typer.Option(help="Style image path or bundled style name.")] = "starry_night",
    content_dir: Annotated[str, typer.Option(help="Folder of content images, or 'samples'.")] = "samples",
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")] = Path("model"),
    steps: int = 1000,
    batch_size: int = 4,
    crop: int = 256,
    lr: float = 1e-3,
    content_weight: float = 1.0,
    style_weight: float = 1e5,
    tv_weight: float = 1e-3,
    style_size: int = 256,
    style_library: Annotated[Optional[Path], typer.Option(help="Precomputed Grams (styleslim style-library).")] = None,
    checkpoint_every: int = 100,
    seed: int = 0,
    stn: Annotated[bool, typer.Option(help="Put a spatial transformer in front of the network.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT/checkpoint.pt.")] = False,
    loss_network: LossNetOpt = "imagenet",
    strict_loss_network: StrictOpt = False,
) -> None:
    """Train a fast-style TransformerNet (Johnson et al. 2016) on one style."""
    from compressor.config import TrainConfig
    from compressor.teacher import train_transformer

    config = TrainConfig(steps=steps, batch_size=batch_size, crop=crop, lr=lr, content_weight=content_weight,
                         style_weight=style_weight, tv_weight=tv_weight, checkpoint_every=checkpoint_every, seed=seed)
    vgg = _loss_network(loss_network, strict_loss_network)
    grams = _style_grams(vgg, style, style_size, style_library)
    try:
        history = train_transformer(grams, Path(style).stem, content_dir, output, config, vgg, stn=stn, resume=resume)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if history:
        typer.echo(f"loss {history[0]['total']:.4g} -> {history[-1]['total']:.4g}; model written to {output}")


def _style_grams(vgg, style: str, style_size: int, library: Path | None):
    """Grams of a style: from a precomputed style library when given, else computed now."""
    from compressor.data import load_image, resolve_style
    from compressor.losses import load_style_library, style_grams

    if library is not None:
        styles, judged_by = load_style_library(library)
        if style not in styles:
            fail(f"{library}: no style {style!r} in this library (has: {', '.join(sorted(styles))})")
        if judged_by != vgg.weights_source:
            fail(f"{library}: Grams were computed with VGG19 {judged_by}, not {vgg.weights_source}")
        return styles[style]
    try:
        return style_grams(vgg, load_image(resolve_style(style), size=style_size).unsqueeze(0))
    except ValueError as exc:
        fail(str(exc))


@app.command("style-library")
def style_library(
    styles: Annotated[list[str], typer.Argument(help="Style image paths or bundled style names.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Library file (.safetensors).")] = Path(
        "styles.safetensors"),
    style_size: int = 256,
    loss_network: LossNetOpt = "imagenet",
    strict_loss_network: StrictOpt = False,
) -> None:
    """Precompute the Gram matrices of style images once, for reuse by gatys and train."""
    from compressor.data import load_image, resolve_style
    from compressor.losses import save_style_library, style_grams

    vgg = _loss_network(loss_network, strict_loss_network)
    grams = {}
    for style in styles:
        try:
            path = resolve_style(style)
            grams[path.stem] = style_grams(vgg, load_image(path, size=style_size).unsqueeze(0))
        except ValueError as exc:
            fail(str(exc))
    save_style_library(output, grams, vgg.weights_source)
    typer.echo(f"{len(grams)} style(s) ({', '.join(grams)}) written to {output}")


@app.command()
def gatys(
    content: Annotated[Path, typer.Argument(help="Content image.")],
    style: Annotated[str, typer.Argument(help="Style image path, bundled style name, or a name in --style-library.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output image.")] = Path("gatys.png"),
    steps: int = 300,
    optimizer: Annotated[str, typer.Option(help="lbfgs | adam")] = "lbfgs",
    lr: Annotated[Optional[float], typer.Option(help="Default: 1.0 for lbfgs, 0.02 for adam.")] = None,
    init: Annotated[str, typer.Option(help="content | noise")] = "content",
    size: Annotated[int, typer.Option(help="Longest side of the result.")] = 512,
    scales: Annotated[Optional[list[int]], typer.Option("--scale", help="Coarse-to-fine sides, e.g. --scale 256 "
                                                         "--scale 512.")] = None,
    content_weight: float = 1.0,
    style_weight: float = 1e5,
    tv_weight: float = 1e-3,
    style_size: int = 256,
    style_library: Annotated[Optional[Path], typer.Option(help="Precomputed Grams (styleslim style-library).")] = None,
    snapshot_every: Annotated[int, typer.Option(help="Save intermediate images every N steps (0: never).")] = 0,
    seed: int = 0,
    loss_network: LossNetOpt = "imagenet",
    strict_loss_network: StrictOpt = False,
) -> None:
    """Gatys et al. iterative style transfer (optimises the pixels; slow, model-free)."""
    from compressor.data import ImageError, load_image, save_image
    from compressor.gatys import GatysConfig, snapshot_writer, stylize_gatys
    from compressor.losses import LossWeights

    if optimizer not in ("lbfgs", "adam") or init not in ("content", "noise"):
        fail("--optimizer must be lbfgs or adam, --init content or noise")
    try:
        content_image = load_image(content, size=size).unsqueeze(0)
    except ImageError as exc:
        fail(str(exc))
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
    style: Annotated[Optional[str], typer.Option(help="Style image for AdaIN models.")] = None,
    alpha: Annotated[float, typer.Option(help="AdaIN content (0) to style (1) blend.")] = 1.0,
    size: Annotated[Optional[int], typer.Option(help="Resize the longest side first.")] = None,
    batch_size: int = 4,
    tile: Annotated[Optional[int], typer.Option(help="Tile side in px (0: whole image at once; default: tiles "
                                                "only when the image would not fit --max-memory).")] = None,
    max_memory: Annotated[str, typer.Option(help="Memory budget that picks tiling, e.g. 2GB, 800MB.")] = "2GB",
) -> None:
    """Stylise images, folders (batched) and videos (frame by frame, same fps) with a model or artifact."""
    from compressor.data import ImageError, list_images
    from compressor.stylize import VIDEO_SUFFIXES, load_stylizer, stylize_files
    from compressor.tiling import parse_plan_options
    from exports.runtime import is_artifact
    from exports.tile_export import load_artifact_runner

    try:
        tile, budget = parse_plan_options(tile, max_memory)
        files = [f for p in inputs for f in ([p] if p.suffix.lower() in VIDEO_SUFFIXES else list_images(p))]
        runner = load_artifact_runner(model) if is_artifact(model) else None
        stylizer = load_stylizer(model, style=style, alpha=alpha, runner=runner)
        written = stylize_files(stylizer, files, output, size=size, batch_size=batch_size, tile=tile,
                                max_memory=budget)
    except (ImageError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {len(written)} file(s): {written[0]}{' ...' if len(written) > 1 else ''}")


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    out: Annotated[Path, typer.Option("--out", help="Root folder of runs.")] = Path("runs"),
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set "
                                                           "prune.ratio=0.75.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run stages even when their inputs are unchanged.")] = False,
) -> None:
    """Run a compression recipe: model -> prune -> distill -> quantize -> export -> evaluate."""
    from compressor.pipeline import run_recipe
    from compressor.recipe import RecipeError, load_recipe

    try:
        parsed = load_recipe(recipe, overrides)
    except RecipeError as exc:
        fail(str(exc))
    run_dir = run_recipe(parsed, out, force=force)
    typer.echo(f"run finished: {run_dir}")


@app.command()
def prune(
    model_dir: Annotated[Path, typer.Argument(help="Model folder (spec.json + weights.safetensors).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")],
    ratio: Annotated[float, typer.Option(help="Fraction of channels to remove.")] = 0.5,
    scope: Annotated[str, typer.Option(help="local (same ratio per layer) | global (one ranking).")] = "local",
    round_to: Annotated[Optional[int], typer.Option(help="Keep channel counts multiples of this.")] = None,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Layer-name glob never pruned (repeatable).")] = None,
    override: Annotated[Optional[list[str]], typer.Option(help="GLOB=RATIO per-layer ratio (repeatable).")] = None,
    steps: Annotated[int, typer.Option(help="Reach the ratio in this many pruning steps.")] = 1,
    vgg_mode: Annotated[str, typer.Option(help="VGG19: keep_taps | project_taps.")] = "keep_taps",
) -> None:
    """L1 structured channel pruning (torch-pruning); prints params and MACs before/after."""
    from pydantic import ValidationError

    from compressor.config import PruneStage
    from compressor.prune import prune_dir
    from compressor.recipe import format_errors

    overrides = {}
    for item in override or []:
        glob, _, value = item.rpartition("=")
        try:
            if not glob:
                raise ValueError
            overrides[glob] = float(value)
        except ValueError:
            fail(f"--override {item!r}: expected GLOB=RATIO, e.g. 'res*.conv1.conv2d=0.75'")
    try:
        config = PruneStage(ratio=ratio, scope=scope, round_to=round_to, ignore=ignore or [], overrides=overrides,
                            iterative_steps=steps, vgg_mode=vgg_mode)
        meta = prune_dir(model_dir, output, config)
    except ValidationError as exc:
        fail(f"invalid prune options\n{format_errors(exc)}")
    except (ValueError, TypeError, FileNotFoundError) as exc:
        fail(str(exc))
    before, after = meta["before"], meta["after"]
    typer.echo(f"params {before['params']:,} -> {after['params']:,} ({meta['params_ratio']:.1%})")
    typer.echo(f"MACs   {before['macs']:,} -> {after['macs']:,} ({meta['macs_ratio']:.1%}) at {after['macs_at']}")
    typer.echo(f"pruned model written to {output}")


@app.command()
def distill(
    student_dir: Annotated[Path, typer.Argument(help="Student model folder (e.g. a pruned model).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write (+ checkpoint.pt, log).")],
    teacher: Annotated[Optional[Path], typer.Option(help="Teacher model folder (the uncompressed model).")] = None,
    no_teacher: Annotated[bool, typer.Option("--no-teacher", help="Plain fine-tuning: no teacher terms.")] = False,
    style: Annotated[Optional[str], typer.Option(
        help="Style image or bundled name. TransformerNet: default the student's spec style; "
             "AdaIN: crops of it (default: the bundled paintings); VGG19: unused.")] = None,
    content_dir: Annotated[str, typer.Option(help="Folder of content images, or 'samples'.")] = "samples",
    steps: int = 1000,
    lr: float = 1e-3,
    lr_schedule: Annotated[str, typer.Option(help="constant | cosine")] = "constant",
    output_weight: Annotated[float, typer.Option(help="L1 to the teacher's output.")] = 1.0,
    perceptual_weight: Annotated[float, typer.Option(help="VGG feature MSE to the teacher's output.")] = 1.0,
    feature_weight: Annotated[float, typer.Option(help="VGG19 students: tap MSE to the teacher's taps.")] = 1.0,
    style_weight: Annotated[Optional[float], typer.Option(
        help="Gram style weight (TransformerNet, default 1e5) or AdaIN mean/std style weight (default 10).")] = None,
    content_weight: float = 1.0,
    tv_weight: float = 1e-3,
    crop: int = 256,
    batch_size: Annotated[int, typer.Option(help="Per process under torchrun.")] = 4,
    style_size: int = 256,
    checkpoint_every: int = 100,
    seed: int = 0,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast.")] = False,
    grad_checkpointing: Annotated[bool, typer.Option(help="Recompute activations: less memory.")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Also log to OUTPUT/tensorboard (needs tensorboard).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT/checkpoint.pt.")] = False,
    loss_network: LossNetOpt = "imagenet",
    strict_loss_network: StrictOpt = False,
) -> None:
    """Distil a (pruned) student from its teacher, or fine-tune it (--no-teacher). Runs under torchrun too."""
    import os

    from pydantic import ValidationError

    from compressor.config import TrainConfig
    from compressor.data import ContentCrops, load_image, resolve_images, resolve_style
    from compressor.distill import make_objective, prepare_run, train
    from compressor.models import get_family, load_model
    from compressor.recipe import format_errors

    if (teacher is None) != no_teacher:
        fail("give --teacher DIR to distil, or --no-teacher for plain fine-tuning (not both)")
    try:
        student = load_model(student_dir)
        teacher_model = load_model(teacher) if teacher is not None else None
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    weights = {"output_weight": 0.0, "perceptual_weight": 0.0} if no_teacher else {
        "output_weight": output_weight, "perceptual_weight": perceptual_weight}
    family = get_family(student)
    if style_weight is not None:
        weights[family.style_weight_key] = style_weight
    try:
        config = TrainConfig(steps=steps, lr=lr, lr_schedule=lr_schedule, feature_weight=feature_weight,
                             content_weight=content_weight, tv_weight=tv_weight, crop=crop, batch_size=batch_size,
                             checkpoint_every=checkpoint_every, seed=seed, bf16=bf16,
                             grad_checkpointing=grad_checkpointing, tensorboard=tensorboard, **weights)
    except ValidationError as exc:
        fail(f"invalid distill options\n{format_errors(exc)}")
    vgg = _loss_network(loss_network, strict_loss_network)
    grams, style_images = None, None
    if family.role == "style_transformer":
        style = style or student.spec.style
        if style is None:
            fail(f"{student_dir}: the spec names no style; give --style")
        grams = _style_grams(vgg, style, style_size, None)
    elif family.role == "arbitrary_style" and style is not None:
        try:
            style_images = [load_image(resolve_style(style), size=max(2 * crop, style_size))]
        except ValueError as exc:
            fail(str(exc))
    run = prepare_run(vgg, teacher_model, grams)
    try:
        objective = make_objective(student, run.teacher, config, run.vgg, run.grams, style_images)
        data = ContentCrops(resolve_images(content_dir, "train"), crop)
        meta = {"student_from": str(student_dir), "teacher": str(teacher) if teacher else None, "style": style,
                "loss_network": vgg.weights_source}
        history = train(student, objective, data, config, output, resume=resume, meta=meta, device=run.device)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        fail(str(exc))
    if history and os.environ.get("RANK", "0") == "0":
        typer.echo(f"loss {history[0]['total']:.4g} -> {history[-1]['total']:.4g}; model written to {output}")


@app.command()
def evaluate(
    targets: Annotated[list[str], typer.Argument(help="Model folders, .pth checkpoints or .onnx/.tflite artifacts.")],
    teacher: Annotated[str, typer.Option(help="Reference model every degradation and PSNR refers to.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for report.json/md/html.")] = Path("evaluation"),
    images: Annotated[str, typer.Option(help="Folder of evaluation images, or 'samples' (held out).")] = "samples",
    style: Annotated[str, typer.Option(help="Style image path or bundled style name.")] = "starry_night",
    size: int = 256,
    latency_runs: int = 10,
    threads: int = 2,
    memory: Annotated[bool, typer.Option(help="Measure peak RSS per variant in a fresh process.")] = True,
    loss_network: LossNetOpt = "imagenet",
    strict_loss_network: StrictOpt = False,
) -> None:
    """Evaluate models/artifacts against a teacher: quality (reference VGG19), size, MACs, latency, memory."""
    from compressor.config import EvaluateStage
    from evaluation.stage import evaluate_paths

    vgg = _loss_network(loss_network, strict_loss_network)
    settings = EvaluateStage(images=images, size=size, latency_sizes=[size], latency_runs=latency_runs,
                             threads=threads, memory=memory)
    try:
        evaluate_paths(targets, teacher, vgg, output, style=style, images=images, settings=settings)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo((output / "report.md").read_text())
    typer.echo(f"reports written to {output}/report.{{json,md,html}}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run folder (or folder) holding report.json.")]) -> None:
    """Re-render report.md and report.html from report.json."""
    from evaluation.report import load_report, render

    try:
        render(load_report(run_dir), run_dir)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"rendered {run_dir}/report.md and {run_dir}/report.html")


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run folder (holds report.json).")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the table to this .md file.")] = None,
) -> None:
    """Side-by-side table of two runs' report.json (variants matched by name)."""
    from compressor.io import atomic_write
    from evaluation.report import compare as compare_reports
    from evaluation.report import load_report

    try:
        table = compare_reports(load_report(run_a), load_report(run_b), run_a.name, run_b.name)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(table)
    if output is not None:
        atomic_write(output, lambda p: p.write_text(table))


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model folder (spec.json + weights.safetensors).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx | tflite | coreml")] = "onnx",
    precision: Annotated[Optional[str], typer.Option(help="fp32 | fp16 (default: ONNX/TFLite fp32, Core ML fp16)")] = None,
    size: Annotated[tuple[int, int], typer.Option(help="Input height and width.")] = (256, 256),
    layout: Annotated[str, typer.Option(help="nchw | nhwc (NHWC I/O for mobile callers)")] = "nchw",
    dynamic: Annotated[bool, typer.Option(help="ONNX only: dynamic height/width.")] = False,
    tile: Annotated[bool, typer.Option(help="Tile artifact (ONNX/TFLite, square --size): takes the norm statistics "
                                       "as inputs, so stylize runs photos of any size in tiles.")] = False,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the artifact and its manifest.")] = Path("exports"),
) -> None:
    """Export a model to ONNX, TFLite or Core ML, verify it on its runtime, and write its manifest."""
    from exports.common import ExportError
    from exports.stage import export_artifact
    from exports.tile_export import export_tile_artifact

    try:
        if tile and size[0] != size[1]:
            raise ValueError(f"--size {size[0]} {size[1]}: a tile artifact is square (e.g. --size 512 512)")
        path, manifest = export_tile_artifact(model, fmt, output, size=size[0]) if tile else export_artifact(
            model, fmt, output, precision=precision, size=size, layout=layout, dynamic=dynamic)
    except (ExportError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    verdict = manifest["parity"]
    numbers = (f"PSNR {verdict['psnr_db']} dB (>= {verdict['threshold_db']}), max abs {verdict['max_abs_error']:.3g}"
               if "psnr_db" in verdict else f"structure verified; predictions {verdict['predictions']}")
    typer.echo(f"{path}: {manifest['format']} {manifest['precision']} on {verdict['runtime']}: {numbers}")


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="Model folder (spec.json + weights.safetensors).")],
    runtime: Annotated[list[str], typer.Option("--runtime", "-r", help="onnx | tflite | coreml (repeatable)")] = ["onnx"],
    mode: Annotated[str, typer.Option(help="static | dynamic | fp16 | weight-only | qat")] = "static",
    calibration: Annotated[str, typer.Option(help="Folder of calibration images, or 'samples'.")] = "samples",
    method: Annotated[str, typer.Option(help="Calibration: minmax | entropy | percentile")] = "minmax",
    keep_float: Annotated[list[str], typer.Option("--keep-float", help="Conv module-name glob kept float.")] = [],
    max_style_increase_pct: Annotated[Optional[float], typer.Option(help="Mixed-precision budget (%).")] = None,
    size: Annotated[int, typer.Option(help="Square input side of the artifacts.")] = 256,
    style: Annotated[str, typer.Option(help="Style the sensitivity/quality numbers are judged against.")] = "starry_night",
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for artifacts and manifests.")] = Path("quantized"),
    loss_network: LossNetOpt = "imagenet",
    strict_loss_network: StrictOpt = False,
) -> None:
    """Quantize a model for ONNX Runtime, LiteRT or Core ML (PTQ or QAT), verify parity, write manifests."""
    from pydantic import ValidationError

    from compressor.config import QuantizeStage
    from compressor.quantize import QuantizeError
    from compressor.recipe import format_errors
    from exports.quantize import quantize as run_quantize

    try:
        settings = QuantizeStage(runtimes=runtime, mode=mode, calibration=calibration, calibration_method=method,
                                 keep_float=keep_float, max_style_increase_pct=max_style_increase_pct, size=size)
    except ValidationError as exc:
        fail("invalid options\n" + format_errors(exc))
    vgg = _loss_network(loss_network, strict_loss_network)
    try:
        manifests = run_quantize(model, output, settings, vgg, _style_grams(vgg, style, 256, None))
    except (QuantizeError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    for m in manifests:
        p = m["parity"]
        verdict = (f"PSNR {p['psnr_db']} dB (>= {p['threshold_db']}) {'ok' if p['passed'] else 'FAILED'}"
                   if p.get("psnr_db") is not None else "structure verified (no predictions on this OS)")
        typer.echo(f"{output / m['format'] / m['artifact']}: {m['precision']}: {verdict}")


if __name__ == "__main__":
    app()
