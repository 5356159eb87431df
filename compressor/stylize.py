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

from compressor.data import IMAGE_SUFFIXES, ImageError, load_image, pil_to_tensor, save_image, tensor_to_pil
from compressor.models import AdaINNet, ArbitraryStyleNet, MultiStyleNet, SingleStyle, VGG19LossNet
from compressor.models.checkpoint import atomic_write
from compressor.models.multistyle import parse_style_weights

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif"}
ARTIFACT_SUFFIXES = {".onnx", ".tflite"}
SIZE_MULTIPLE = 4  # conditional networks: two stride-2 convs then x4 upsampling; other sizes come out larger
Stylizer = Callable[[torch.Tensor], torch.Tensor]


def load_stylizer(model_path: str | Path, style: str | Path | None = None, alpha: float = 1.0,
                  style_size: int = 512, style_weights: str | None = None) -> Stylizer:
    """A function mapping a (N, 3, H, W) batch in [0, 1] to its stylised version.

    ``style`` is the style image of arbitrary-style models (AdaIN, arbitrary);
    ``style_weights`` picks or blends the styles of a multi-style model
    (``"7"`` or ``"3:0.5,12:0.5"``).
    """
    from compressor.teacher import load_any

    model_path = Path(model_path)
    if model_path.suffix in ARTIFACT_SUFFIXES:
        from exports.runtime import load_runner

        runner = load_runner(model_path)
        return _artifact_stylizer(runner, _artifact_style_input(runner, model_path, style, style_weights))
    model = load_any(model_path)
    if isinstance(model, VGG19LossNet):
        raise ValueError(f"{model_path}: a VGG19 loss network does not stylise images")
    if isinstance(model, MultiStyleNet):
        if style_weights is None:
            raise ValueError(f"{model_path}: a multi-style model ({model.spec.n_styles} styles); pass --style-index K "
                             "or --style-weights '3:0.5,12:0.5'")
        single = SingleStyle(model, parse_style_weights(style_weights, model.spec.n_styles)).eval()
        return torch.no_grad()(_padded(single, SIZE_MULTIPLE))
    if isinstance(model, ArbitraryStyleNet):
        if style is None:
            raise ValueError(f"{model_path}: an arbitrary-style model; pass --style IMAGE")
        vector = _style_vector(style)

        @torch.no_grad()
        def arbitrary(batch: torch.Tensor) -> torch.Tensor:
            return model(batch, vector)

        return _padded(arbitrary, SIZE_MULTIPLE)
    if isinstance(model, AdaINNet):
        if style is None:
            raise ValueError(f"{model_path}: AdaIN is arbitrary-style; pass --style")
        from compressor.data import resolve_style

        style_image = load_image(resolve_style(style), size=style_size).unsqueeze(0)

        @torch.no_grad()
        def adain(batch: torch.Tensor) -> torch.Tensor:
            return model(batch, style_image.expand(batch.shape[0], -1, -1, -1), alpha=alpha)

        return adain
    return torch.no_grad()(model)


def _artifact_stylizer(runner, style_input: np.ndarray | None = None) -> Stylizer:
    """Run an exported artifact; a fixed-shape one gets its input size and the result is resized back."""
    shape = runner.input_shape or []
    hw = shape[2:4] if runner.layout == "nchw" else shape[1:3]
    fixed = tuple(hw) if len(hw) == 2 and all(isinstance(d, int) for d in hw) else None
    extra = () if style_input is None else (style_input,)

    def stylize(batch: torch.Tensor) -> torch.Tensor:
        size = tuple(batch.shape[-2:])
        if fixed and size != fixed:
            batch = torch.nn.functional.interpolate(batch, size=fixed, mode="bilinear", antialias=True)
        out = torch.from_numpy(np.asarray(runner(batch.numpy(), *extra)))
        if out.shape[-2:] != size:
            out = torch.nn.functional.interpolate(out, size=size, mode="bilinear", antialias=True)
        return out

    return stylize if fixed or style_input is None else _padded(stylize, SIZE_MULTIPLE)


def _artifact_style_input(runner, path: Path, style: str | Path | None, style_weights: str | None) -> np.ndarray | None:
    """The 1-D style input of a two-input artifact (``style_weights`` or ``style_vector``, as exported)."""
    if len(runner.input_names) < 2 or runner.input_names[1] not in ("style_weights", "style_vector"):
        return None
    n = runner.input_shapes[1][-1]
    if runner.input_names[1] == "style_weights":
        if style_weights is None:
            raise ValueError(f"{path}: a multi-style model ({n} styles); pass --style-index K or --style-weights")
        return parse_style_weights(style_weights, int(n)).numpy()
    if style is None:
        raise ValueError(f"{path}: an arbitrary-style model; pass --style IMAGE")
    return _style_vector(style).numpy()


def _style_vector(style: str | Path) -> torch.Tensor:
    from compressor.data import resolve_style
    from compressor.models.arbitrary import style_vector

    return style_vector(load_image(resolve_style(style)))


def _padded(stylizer: Stylizer, multiple: int) -> Stylizer:
    """Reflect-pad H and W up to a multiple of ``multiple`` and crop back: outputs keep the input's size."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        h, w = batch.shape[-2:]
        ph, pw = -h % multiple, -w % multiple
        if not (ph or pw):
            return stylizer(batch)
        return stylizer(torch.nn.functional.pad(batch, (0, pw, 0, ph), mode="reflect"))[..., :h, :w]

    return run


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
                image = load_resized(image, size)
            frames.append(np.asarray(tensor_to_pil(stylizer(image.unsqueeze(0))[0])))
        if not frames:
            raise ImageError(f"{source}: video has no frames")
        if target.suffix.lower() == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, extension=target.suffix, fps=fps)

    atomic_write(target, write)
    return target


def load_resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (3, H, W) tensor so its longest side is ``size``; sides rounded to even for video codecs."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    new = (max(2, round(h * scale / 2) * 2), max(2, round(w * scale / 2) * 2))
    return torch.nn.functional.interpolate(image[None], size=new, mode="bilinear", antialias=True)[0].clamp(0, 1)
