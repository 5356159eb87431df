"""Apply a style model to images, folders and videos.

A model is a model folder (PyTorch), a pytorch/examples ``.pth``, or an
exported ``.onnx`` / ``.tflite`` artifact run on its own runtime, all with the
same pre- and post-processing so their outputs can be compared side by side.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from compressor.data import (
    IMAGE_SUFFIXES,
    ImageError,
    load_image,
    pil_to_tensor,
    resolve_style,
    save_image,
    tensor_to_pil,
)
from compressor.images import fit_longest, resize
from compressor.io import atomic_write
from compressor.models import get_family, load_any
from compressor.tiling import (
    TilePlan,
    TileRunner,
    TilingError,
    image_size,
    stylize_file,
    stylize_tiled,
)

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif"}
Stylizer = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_MAX_MEMORY = 2 * 2**30


def load_stylizer(model_path: str | Path, style: str | Path | None = None, alpha: float = 1.0,
                  style_size: int = 512, runner: Callable | None = None) -> Stylizer:
    """A function mapping a (N, 3, H, W) batch in [0, 1] to its stylised version.

    ``model_path`` is a model folder or foreign checkpoint; an exported artifact comes in as ``runner``
    (``exports.runtime.load_runner``: the app layer loads it, this library module does not import exports).
    Torch models, and tile artifacts (a TileRunner from exports.tile_export), come as a TileRunner, which
    also stylises big images in tiles.
    """
    if isinstance(runner, TileRunner):
        return runner
    if runner is not None:
        return _artifact_stylizer(runner)
    model_path = Path(model_path)
    model = load_any(model_path)
    family = get_family(model)
    style_image = None
    if family.role == "arbitrary_style" and style is not None:
        style_image = load_image(resolve_style(style), size=style_size).unsqueeze(0)
    try:
        return TileRunner(family.stylizer(model, style_image, alpha))
    except ValueError as exc:
        raise ValueError(f"{model_path}: {exc}") from None


def _artifact_stylizer(runner) -> Stylizer:
    """Run an exported artifact; a fixed-shape one gets its input size and the result is resized back."""
    shape = runner.input_shape or []
    hw = shape[2:4] if runner.layout == "nchw" else shape[1:3]
    fixed = tuple(hw) if len(hw) == 2 and all(isinstance(d, int) for d in hw) else None

    def stylize(batch: torch.Tensor) -> torch.Tensor:
        size = tuple(batch.shape[-2:])
        if fixed and size != fixed:
            batch = resize(batch, fixed)
        return resize(torch.from_numpy(np.asarray(runner(batch.numpy()))), size)

    return stylize


def stylize_files(stylizer: Stylizer, inputs: list[Path], out: Path, size: int | None = None,
                  batch_size: int = 4, progress: bool = True, tile: int | None = None,
                  max_memory: int = DEFAULT_MAX_MEMORY) -> list[Path]:
    """Stylise images (batched by size) and videos; returns the written files.

    With one input and an ``out`` that has a file suffix, ``out`` is the file;
    otherwise ``out`` is a folder and outputs keep their input names. Images or
    frames that would not fit ``max_memory`` at once (or all, with ``tile`` > 0)
    go through tiles with thumbnail statistics; ``tile`` 0 never tiles.
    """
    if not inputs:
        raise ImageError("no input images or videos given")
    single_file = len(inputs) == 1 and out.suffix != ""
    targets = {p: out if single_file else out / (p.stem + (p.suffix if p.suffix.lower() in VIDEO_SUFFIXES
                                                          else ".png")) for p in inputs}
    videos = [p for p in inputs if p.suffix.lower() in VIDEO_SUFFIXES]
    images = [p for p in inputs if p not in videos]
    unknown = [p for p in images if p.suffix.lower() not in IMAGE_SUFFIXES]
    if unknown:
        raise ImageError(f"{unknown[0]}: not an image or video this tool reads")
    options = (tile, max_memory)
    written = _stylize_images(stylizer, images, targets, size, batch_size, progress, options)
    for video in videos:
        written.append(stylize_video(stylizer, video, targets[video], size, progress, options))
    return written


def _plan(stylizer: Stylizer, height: int, width: int, options: tuple[int | None, int]) -> TilePlan:
    tile, max_memory = options
    if isinstance(stylizer, TileRunner):
        return stylizer.plan(height, width, max_memory, tile)
    if tile:
        raise TilingError(f"--tile {tile}: this artifact takes no normalisation statistics, so it cannot be tiled "
                          "(export a tile artifact: exports.tile_export.export_tile_artifact)")
    return TilePlan(0, 0, 1, 0)


def _resized_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    if not size:
        return height, width
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _stylize_images(stylizer, images, targets, size, batch_size, progress, options) -> list[Path]:
    by_shape: dict[tuple[int, ...], list[tuple[Path, torch.Tensor]]] = defaultdict(list)
    written = []
    for path in images:
        height, width = _resized_size(*image_size(path), size) if options[0] != 0 else (0, 0)
        plan = _plan(stylizer, height, width, options)
        if plan.tiled:
            written.append(stylize_file(stylizer, path, targets[path], plan, (height, width) if size else None,
                                        progress=progress))
            continue
        tensor = load_image(path, size=size)
        by_shape[tuple(tensor.shape)].append((path, tensor))
    count = sum(len(g) for g in by_shape.values())
    with tqdm(total=count, disable=not progress or count < 2, desc="stylize") as bar:
        for group in by_shape.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                outputs = stylizer(torch.stack([t for _, t in chunk]))
                for (path, _), output in zip(chunk, outputs):
                    written.append(save_image(output, targets[path]))
                bar.update(len(chunk))
    return written


def stylize_video(stylizer: Stylizer, source: Path, target: Path, size: int | None = None,
                  progress: bool = True, options: tuple[int | None, int] = (None, DEFAULT_MAX_MEMORY)) -> Path:
    """Frame by frame, keeping the frame rate; written to a temp file and renamed when complete.

    Frames take the image path: tiled with thumbnail statistics when one would not fit the budget.
    """
    import imageio.v3 as iio

    try:
        meta = iio.immeta(source)
    except Exception as exc:
        raise ImageError(f"{source}: not a readable video ({exc})") from None
    fps = meta.get("fps") or (1000.0 / meta["duration"] if meta.get("duration") else 25.0)

    def write(tmp: Path) -> None:
        frames, plan = [], None
        for frame in tqdm(iio.imiter(source), disable=not progress, desc=f"video {source.name}"):
            image = pil_to_tensor(Image.fromarray(np.asarray(frame)).convert("RGB"))
            if size:
                image = fit_longest(image, size, multiple=2)
            plan = plan or _plan(stylizer, image.shape[-2], image.shape[-1], options)
            if plan.tiled:
                frames.append(stylize_tiled(stylizer, np.asarray(tensor_to_pil(image)), plan, progress=False))
            else:
                frames.append(np.asarray(tensor_to_pil(stylizer(image.unsqueeze(0))[0])))
        if not frames:
            raise ImageError(f"{source}: video has no frames")
        if target.suffix.lower() == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, extension=target.suffix, fps=fps)

    atomic_write(target, write)
    return target
