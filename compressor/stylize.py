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
from compressor.models.arbitrary import style_vector
from compressor.models.conditional_norm import pad_to_multiple
from compressor.models.multistyle import parse_style_weights

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif"}
Stylizer = Callable[[torch.Tensor], torch.Tensor]


def load_stylizer(model_path: str | Path, style: str | Path | None = None, alpha: float = 1.0,
                  style_size: int = 512, runner: Callable | None = None, style_weights: str | None = None
                  ) -> Stylizer:
    """A function mapping a (N, 3, H, W) batch in [0, 1] to its stylised version (same H x W out).

    ``model_path`` is a model folder or foreign checkpoint; an exported artifact comes in as ``runner``
    (``exports.runtime.load_runner``: the app layer loads it, this library module does not import exports).
    ``style_weights`` picks or blends the styles of a multi-style network (``"7"``, ``"3:0.5,12:0.5"``).
    """
    if runner is not None:
        return _artifact_stylizer(runner, _artifact_style_input(runner, Path(model_path), style, style_weights))
    model_path = Path(model_path)
    model = load_any(model_path)
    family = get_family(model)
    style_image = None
    if family.role == "arbitrary_style" and style is not None:
        style_image = load_image(resolve_style(style), size=style_size).unsqueeze(0)
    try:
        if family.style_bank:
            if style_weights is None:
                raise ValueError("a multi-style model; pass --style-index K or --style-weights '3:0.5,12:0.5'")
            stylizer = family.stylizer(model, style_image, alpha, style_weights=style_weights)
        elif style_weights is not None:
            raise ValueError("--style-index / --style-weights apply to multi-style models only")
        else:
            stylizer = family.stylizer(model, style_image, alpha)
    except ValueError as exc:
        raise ValueError(f"{model_path}: {exc}") from None
    return stylizer


def _artifact_stylizer(runner, style_input: np.ndarray | None = None) -> Stylizer:
    """Run an exported artifact; a fixed-shape one gets its input size and the result is resized back."""
    shape = runner.input_shape or []
    hw = shape[2:4] if runner.layout == "nchw" else shape[1:3]
    fixed = tuple(hw) if len(hw) == 2 and all(isinstance(d, int) for d in hw) else None
    extra = () if style_input is None else (style_input,)

    def stylize(batch: torch.Tensor) -> torch.Tensor:
        size = tuple(batch.shape[-2:])
        if fixed and size != fixed:
            batch = resize(batch, fixed)
        return resize(torch.from_numpy(np.asarray(runner(batch.numpy(), *extra))), size)

    return stylize if fixed or style_input is None else pad_to_multiple(stylize, 4)


def _artifact_style_input(runner, path: Path, style: str | Path | None, style_weights: str | None
                          ) -> np.ndarray | None:
    """The 1-D style input of a two-input artifact (``style_weights`` or ``style_vector``, as exported)."""
    names = runner.input_names
    if len(names) < 2 or names[1] not in ("style_weights", "style_vector"):
        if style_weights is not None:
            raise ValueError(f"{path}: --style-index / --style-weights apply to multi-style models only")
        return None
    if names[1] == "style_weights":
        if style_weights is None:
            raise ValueError(f"{path}: a multi-style model; pass --style-index K or --style-weights '3:0.5,12:0.5'")
        return parse_style_weights(style_weights, int(runner.input_shapes[1][-1])).numpy()
    if style is None:
        raise ValueError(f"{path}: an arbitrary-style model; pass --style IMAGE")
    return style_vector(load_image(resolve_style(style))).numpy()




def stylize_files(stylizer: Stylizer, inputs: list[Path], out: Path, size: int | None = None,
                  batch_size: int = 4, progress: bool = True) -> list[Path]:
    """Stylise images (batched by size) and videos; returns the written files.

    With one input and an ``out`` that has a file suffix, ``out`` is the file;
    otherwise ``out`` is a folder and outputs keep their input names.
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
    written = _stylize_images(stylizer, images, targets, size, batch_size, progress)
    for video in videos:
        written.append(stylize_video(stylizer, video, targets[video], size, progress))
    return written


def _stylize_images(stylizer, images, targets, size, batch_size, progress) -> list[Path]:
    by_shape: dict[tuple[int, ...], list[tuple[Path, torch.Tensor]]] = defaultdict(list)
    for path in images:
        tensor = load_image(path, size=size)
        by_shape[tuple(tensor.shape)].append((path, tensor))
    written = []
    with tqdm(total=len(images), disable=not progress or len(images) < 2, desc="stylize") as bar:
        for group in by_shape.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                outputs = stylizer(torch.stack([t for _, t in chunk]))
                for (path, _), output in zip(chunk, outputs):
                    written.append(save_image(output, targets[path]))
                bar.update(len(chunk))
    return written


def stylize_video(stylizer: Stylizer, source: Path, target: Path, size: int | None = None,
                  progress: bool = True) -> Path:
    """Frame by frame, keeping the frame rate; written to a temp file and renamed when complete."""
    import imageio.v3 as iio

    try:
        meta = iio.immeta(source)
    except Exception as exc:
        raise ImageError(f"{source}: not a readable video ({exc})") from None
    fps = meta.get("fps") or (1000.0 / meta["duration"] if meta.get("duration") else 25.0)

    def write(tmp: Path) -> None:
        frames = []
        for frame in tqdm(iio.imiter(source), disable=not progress, desc=f"video {source.name}"):
            image = pil_to_tensor(Image.fromarray(np.asarray(frame)).convert("RGB"))
            if size:
                image = fit_longest(image, size, multiple=2)
            frames.append(np.asarray(tensor_to_pil(stylizer(image.unsqueeze(0))[0])))
        if not frames:
            raise ImageError(f"{source}: video has no frames")
        if target.suffix.lower() == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, extension=target.suffix, fps=fps)

    atomic_write(target, write)
    return target
