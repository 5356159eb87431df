"""Apply a style model to images, folders and videos.

A model is a model folder (PyTorch), a pytorch/examples ``.pth``, or an
exported ``.onnx`` / ``.tflite`` artifact run on its own runtime, all with the
same pre- and post-processing so their outputs can be compared side by side.

Outputs keep the input's exact size (inputs are reflect-padded to the size the
network needs, and the result is cropped back), one unreadable input never
stops the others, and an image too large for memory is refused before it is run.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
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
from compressor.errors import UserError
from compressor.images import fit_longest, resize
from compressor.io import atomic_write
from compressor.models import get_family, load_any
from compressor.models.arbitrary import style_vector
from compressor.models.conditional_norm import parse_style_weights
from compressor.outputs import check_output_dir, check_output_file
from compressor.tiling import (
    TilePlan,
    TileRunner,
    TilingError,
    held_bytes,
    image_size,
    stylize_file,
    stylize_tiled,
)

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif"}
# Peak memory of a forward pass over the sum of its layer outputs: 0.37 measured for TransformerNet (CPU, no_grad).
PEAK_OVER_LAYER_OUTPUTS = 0.4
ARTIFACT_BYTES_PER_PIXEL = 1200  # ONNX Runtime / LiteRT: about TransformerNet's torch figure
DEFAULT_MAX_MEMORY = 2 * 2**30  # the budget above which an image is stylised in tiles


class Stylizer:
    """Maps a (N, 3, H, W) batch in [0, 1] to its stylised version of exactly the same size.

    ``bytes_per_pixel`` estimates peak memory per input pixel (for :func:`check_fits`);
    ``model`` (torch models) lets a NaN/Inf output be traced to the layer that made it.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], source: str, multiple: int = 1,
                 bytes_per_pixel: float | None = None, model: nn.Module | None = None,
                 tiler: TileRunner | None = None):
        self.run, self.source, self.multiple = run, source, multiple
        self.bytes_per_pixel, self.model = bytes_per_pixel, model
        self.tiler = tiler  # torch models and tile artifacts: big images go through tiles (compressor.tiling)

    def plan(self, height: int, width: int, tile: int | None, max_memory: int, statistics: str = "exact") -> TilePlan:
        """Whole image, or tiles with the whole image's (or with ``statistics`` "thumbnail", a thumbnail's)
        normalisation statistics (``tile`` 0: never; > 0: always, that side).

        An image that needs under half the spare budget by the cheap per-pixel estimate runs whole without asking
        the tiler, whose geometry and memory probes cost a few forward passes.
        """
        spare = max_memory - held_bytes(max_memory)
        if tile is None and self.bytes_per_pixel and self.bytes_per_pixel * height * width < spare / 2:
            return TilePlan(0, 0, 1, 0)
        if self.tiler is not None:
            return self.tiler.plan(height, width, max_memory, tile, statistics=statistics)
        if tile:
            raise TilingError(f"`tile` {tile}: this artifact takes no normalisation statistics, so it cannot be "
                              "tiled (export a tile artifact: styleslim export `tile`)")
        return TilePlan(0, 0, 1, 0)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        h, w = batch.shape[-2:]
        padded = pad_to_multiple(batch, self.multiple)
        out = self.run(padded)[..., :h, :w]
        if not bool(torch.isfinite(out).all()):
            layer = first_nonfinite_layer(self.model, self.run, padded) if self.model is not None else None
            where = f", first produced by layer {layer}" if layer else ""
            raise UserError(self.source, f"the output holds NaN/Inf values{where}",
                            "the model is broken (corrupt or overflowing weights); retrain or re-export it")
        return out


def pad_to_multiple(batch: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom/right so both sides are multiples of ``multiple`` (replicate when too small to reflect)."""
    h, w = batch.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return batch
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(batch, (0, pw, 0, ph), mode=mode)


def first_nonfinite_layer(model: nn.Module, run: Callable, batch: torch.Tensor) -> str | None:
    """The name of the first leaf module of ``model`` whose output holds NaN/Inf (hooks on one rerun of ``run``)."""
    found: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if not list(module.children()):
            def hook(mod, args, out, name=name):
                if not found and torch.is_tensor(out) and not bool(torch.isfinite(out).all()):
                    found.append(name)
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run(batch)
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else None


def layer_output_bytes(run: Callable[[torch.Tensor], object], model: nn.Module, side: int = 64) -> float:
    """Sum of every leaf module's output bytes per input pixel, from one small probe."""
    total = [0]

    def hook(mod, args, out):
        if torch.is_tensor(out):
            total[0] += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            run(torch.rand(1, 3, side, side))
    finally:
        for h in hooks:
            h.remove()
    return total[0] / (side * side)


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's YCbCr


def finish(run: Callable[[torch.Tensor], torch.Tensor], strength: float = 1.0, keep_colors: bool = False
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``run`` followed by what the peer's CLI offers: ``keep_colors`` keeps the photo's colours (its YCbCr
    chroma with the stylised luminance), ``strength`` blends the photo (0) to the stylised picture (1). Both act
    pixel by pixel, so batches and tiles give the same picture."""
    if strength == 1.0 and not keep_colors:
        return run
    weights = torch.tensor(LUMA).view(1, 3, 1, 1)

    def finished(batch: torch.Tensor) -> torch.Tensor:
        out, photo = run(batch), batch[:, :3]
        if keep_colors:  # replacing Y keeps Cb and Cr: every RGB channel moves by the change in Y
            luma = lambda x: (x * weights.to(x)).sum(1, keepdim=True)  # noqa: E731
            out = (photo + luma(out) - luma(photo)).clamp(0, 1)
        return strength * out + (1 - strength) * photo

    return finished


def model_stylizer(model: nn.Module, style_image: torch.Tensor | None = None, alpha: float = 1.0,
                   source: str = "model", style_weights: str | None = None, strength: float = 1.0,
                   keep_colors: bool = False) -> Stylizer:
    """A Stylizer for a torch model (arbitrary-style families: with their style image; multi-style ones:
    with ``style_weights``, style 0 when none is given); ``strength`` and ``keep_colors``: see :func:`finish`."""
    model.eval()
    family = get_family(model)
    if alpha != 1.0 and not family.takes_alpha:
        raise UserError(source, f"a {family.name} model has no content-to-style blend; `alpha` is for AdaIN",
                        "leave `alpha` out")
    try:
        if style_weights is not None and family.n_styles(model) == 1:
            raise ValueError("`style_index` / `style_weights` apply to multi-style models only")
        extra = {"style_weights": style_weights} if family.n_styles(model) > 1 else {}
        run = finish(family.stylizer(model, style_image, alpha, **extra), strength, keep_colors)
    except ValueError as exc:
        raise UserError(source, str(exc)) from None
    bpp = PEAK_OVER_LAYER_OUTPUTS * layer_output_bytes(run, model)
    return Stylizer(run, source, family.size_multiple, bpp, model, tiler=TileRunner(run, model))


def load_stylizer(model_path: str | Path | nn.Module, style: str | Path | None = None, alpha: float = 1.0,
                  style_size: int = 512, runner: Callable | None = None, style_weights: str | None = None,
                  strength: float = 1.0, keep_colors: bool = False) -> Stylizer:
    """A Stylizer for a model folder, a foreign checkpoint or a loaded model.

    An exported artifact comes in as ``runner`` (``exports.runtime.load_runner``: the app layer loads it,
    this library module does not import exports). ``style_weights`` picks or blends the styles of a
    multi-style network (``"7"``, ``"3:0.5,12:0.5"``).
    """
    if runner is not None and alpha != 1.0:
        raise UserError(str(model_path), "an exported artifact has no content-to-style blend; `alpha` is for AdaIN "
                        "models in torch", "leave `alpha` out")
    if isinstance(runner, TileRunner):  # a tile artifact (exports.tile_export): tiles with its statistics inputs
        if strength != 1.0 or keep_colors:
            raise UserError(str(model_path), "a tile artifact runs as exported; `strength` and `keep_colors` are "
                            "for models and whole-image artifacts", "leave them out, or stylize with the model")
        return Stylizer(runner, str(model_path), tiler=runner)
    if runner is not None:
        return _artifact_stylizer(runner, str(model_path),
                                  _artifact_style_input(runner, Path(model_path), style, style_weights),
                                  strength, keep_colors)
    model = model_path if isinstance(model_path, nn.Module) else load_any(Path(model_path))
    model_path = model_path if not isinstance(model_path, nn.Module) else "model"
    family = get_family(model)
    if family.n_styles(model) > 1 and style_weights is None:
        raise UserError(str(model_path), "a multi-style model", "pass `style_index` K or `style_weights` '3:0.5,12:0.5'")
    if style is not None and family.role != "arbitrary_style":
        raise UserError(str(model_path), f"a {family.name} model paints the style it learnt; `style` is for "
                        "arbitrary-style models (adain, arbitrary)", "leave `style` out")
    style_image = None
    if family.role == "arbitrary_style" and style is not None:
        style_image = load_image(resolve_style(style), size=style_size).unsqueeze(0)
    return model_stylizer(model, style_image, alpha, str(model_path), style_weights, strength, keep_colors)


def _artifact_stylizer(runner, source: str, style_input: np.ndarray | None = None, strength: float = 1.0,
                       keep_colors: bool = False) -> Stylizer:
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

    bpp = None if fixed else ARTIFACT_BYTES_PER_PIXEL
    return Stylizer(finish(stylize, strength, keep_colors), source, 1 if fixed else 8, bpp)


def _artifact_style_input(runner, path: Path, style: str | Path | None, style_weights: str | None
                          ) -> np.ndarray | None:
    """The 1-D style input of a two-input artifact (``style_weights`` or ``style_vector``, as exported)."""
    names = runner.input_names
    if len(names) >= 2 and names[1] not in ("style_weights", "style_vector"):
        raise UserError(str(path), f"its second input, {names[1]!r}, takes a style image (AdaIN's); stylize feeds "
                        "artifacts style weights or a style vector", "stylize the model folder with `style` IMAGE")
    if len(names) < 2:
        if style_weights is not None:
            raise UserError(str(path), "`style_index` / `style_weights` apply to multi-style models only")
        if style is not None:
            raise UserError(str(path), "a one-input artifact paints the style it learnt; `style` is for "
                            "arbitrary-style ones", "leave `style` out")
        return None
    if names[1] == "style_weights" and style is not None:
        raise UserError(str(path), "a multi-style artifact takes `style_index` / `style_weights`, not `style`",
                        "leave `style` out")
    if names[1] == "style_weights":
        if style_weights is None:
            raise UserError(str(path), "a multi-style model", "pass `style_index` K or `style_weights` '3:0.5,12:0.5'")
        return parse_style_weights(style_weights, int(runner.input_shapes[1][-1])).numpy()
    if style_weights is not None:
        raise UserError(str(path), "an arbitrary-style artifact takes `style` IMAGE, not `style_index` / "
                        "`style_weights`", "leave them out")
    if style is None:
        raise UserError(str(path), "an arbitrary-style model", "pass `style` IMAGE")
    return style_vector(load_image(resolve_style(style))).numpy()


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit; None where unknown."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"MemAvailable:\s+(\d+) kB", meminfo)
    available = int(found.group(1)) * 1024 if found else None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max" and available is not None:
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def check_fits(stylizer: Stylizer, batch_shape: tuple[int, ...], source: Path) -> None:
    """Refuse, before running, a batch whose forward pass will not fit in memory (with a `size` that would).

    The one place that decides what to do with an image too big to run at once: tiled stylization can
    replace this refusal by routing such images to tiles.
    """
    bpp = getattr(stylizer, "bytes_per_pixel", None)
    available = available_memory()
    if not bpp or available is None:
        return
    n, _, h, w = batch_shape
    need = bpp * n * h * w
    if need <= 0.9 * available:
        return
    side = int(max(h, w) * math.sqrt(0.9 * available / need)) // 16 * 16
    hint = f"give `size` {side} or smaller" if side >= 16 else "free some memory"
    if n > 1:
        hint += ", or `batch_size` 1"
    raise UserError(source, f"{w}x{h} (x{n}) needs about {need / 2**30:.1f} GiB to stylise at once, "
                            f"{available / 2**30:.1f} GiB is available", hint)


class SomeInputsFailed(UserError):
    """Some inputs could not be stylised; every good one was written (``written``), each bad one is named."""

    def __init__(self, failures: list[tuple[Path, str]], written: list[Path]):
        self.failures, self.written = failures, written
        names = "; ".join(f"{p}: {reason}" for p, reason in failures)
        super().__init__(f"{len(failures)} of {len(failures) + len(written)} input(s) failed", names,
                         f"the other {len(written)} were written" if written else "nothing was written")


def output_targets(inputs: list[Path], out: Path) -> dict[Path, Path]:
    """Where each input's result goes; refuses a bad output path before any work.

    One input and an ``out`` with a file suffix: ``out`` is the file. Otherwise ``out`` is a folder
    and each output keeps its input's name; inputs whose names collide (``photo.png`` and ``photo.jpg``,
    or the same name in two folders) get distinct names, never one overwriting the other.
    """
    if not inputs:
        raise ImageError("no input images or videos given")
    known = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    if len(inputs) == 1 and out.suffix != "" and not out.is_dir():
        suffixes = VIDEO_SUFFIXES if inputs[0].suffix.lower() in VIDEO_SUFFIXES else IMAGE_SUFFIXES
        return {inputs[0]: check_output_file(out, suffixes=suffixes)}
    if len(inputs) == 1 and out.suffix.lower() in known and out.is_dir():
        raise UserError(f"-o {out}", "is a folder, not a file", "give a file name, or a folder without an extension")
    if len(inputs) > 1 and out.suffix.lower() in known:
        raise UserError(f"-o {out}", f"{len(inputs)} inputs need an output folder, not a file",
                        "give a folder, e.g. -o stylized")
    check_output_dir(out)
    names = {p: p.stem + (p.suffix if p.suffix.lower() in VIDEO_SUFFIXES else ".png") for p in inputs}
    stems = Counter(names.values())
    names = {p: f"{p.stem}_{p.suffix.lstrip('.').lower()}{Path(n).suffix}" if stems[n] > 1 else n
             for p, n in names.items()}
    taken: set[str] = set()
    targets = {}
    for p, name in names.items():
        stem, suffix, i = Path(name).stem, Path(name).suffix, 1
        while name in taken:
            i += 1
            name = f"{stem}_{i}{suffix}"
        taken.add(name)
        targets[p] = out / name
    return targets


def stylize_files(stylizer: Stylizer, inputs: list[Path], out: Path, size: int | None = None,
                  batch_size: int = 4, progress: bool = True, tile: int | None = None,
                  max_memory: int = DEFAULT_MAX_MEMORY, statistics: str = "exact") -> list[Path]:
    """Stylise images (batched by size) and videos; returns the written files.

    Images or frames that would not fit ``max_memory`` at once (or all, with ``tile`` > 0) go through tiles
    with the whole image's normalisation statistics (``statistics`` "thumbnail": a thumbnail's, faster and
    approximate); ``tile`` 0 never tiles. Every readable input is stylised even when others fail; then
    :class:`SomeInputsFailed` names each bad one.
    """
    options = (tile, max_memory, statistics)
    targets = output_targets(inputs, out)
    videos = [p for p in inputs if p.suffix.lower() in VIDEO_SUFFIXES]
    images = [p for p in inputs if p not in videos]
    failures: list[tuple[Path, str]] = [(p, "not an image or video this tool reads") for p in images
                                        if p.suffix.lower() not in IMAGE_SUFFIXES]
    images = [p for p in images if p.suffix.lower() in IMAGE_SUFFIXES]
    written = _stylize_images(stylizer, images, targets, size, batch_size, progress, failures, options)
    for video in videos:
        try:
            written.append(stylize_video(stylizer, video, targets[video], size, progress, options))
        except ImageError as exc:
            failures.append((video, exc.what.removeprefix(f"{video}: ")))
    if failures:
        raise SomeInputsFailed(failures, written)
    return written


def _resized_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    if not size:
        return height, width
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _stylize_images(stylizer, images, targets, size, batch_size, progress, failures, options) -> list[Path]:
    by_shape: dict[tuple[int, ...], list[tuple[Path, torch.Tensor]]] = defaultdict(list)
    written = []
    for path in images:
        try:
            if options[0] != 0:
                height, width = _resized_size(*image_size(path), size)
                plan = stylizer.plan(height, width, *options)
                if plan.tiled:
                    written.append(stylize_file(stylizer.tiler, path, targets[path], plan,
                                                (height, width) if size else None, progress=progress))
                    continue
            tensor = load_image(path, size=size)
        except ImageError as exc:
            failures.append((path, exc.line().removeprefix(f"{path}: ")))
            continue
        by_shape[tuple(tensor.shape)].append((path, tensor))
    for shape, group in by_shape.items():
        check_fits(stylizer, (min(batch_size, len(group)), *shape), group[0][0])
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


def ffmpeg_reason(exc: BaseException) -> str:
    """The line of an ffmpeg/imageio error that says what is wrong, without the banner."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    banner = ("ffmpeg version", "built with", "configuration:", "lib", "=== stderr ===", "Copyright")
    lines = [re.sub(r"^\[[^\]]+\]\s*", "", line) for line in lines if not line.startswith(banner)]
    return lines[-1][:200] if lines else type(exc).__name__


def stylize_video(stylizer: Stylizer, source: Path, target: Path, size: int | None = None,
                  progress: bool = True, options: tuple[int | None, int, str] = (None, DEFAULT_MAX_MEMORY, "exact")
                  ) -> Path:
    """Frame by frame, keeping the frame rate; written to a temp file and renamed when complete.

    Frames take the image path: tiled (``options``: tile, max_memory, statistics) when one would not fit.
    """
    import imageio.v3 as iio

    try:
        meta = iio.immeta(source)
    except Exception as exc:
        raise ImageError(f"{source}: not a readable video ({ffmpeg_reason(exc)})") from None
    fps = meta.get("fps") or (1000.0 / meta["duration"] if meta.get("duration") else 25.0)

    def write(tmp: Path) -> None:
        frames, plan = [], None
        try:
            for frame in tqdm(iio.imiter(source), disable=not progress, desc=f"video {source.name}"):
                image = pil_to_tensor(Image.fromarray(np.asarray(frame)).convert("RGB"))
                if size:
                    image = fit_longest(image, size, multiple=2)
                if plan is None:
                    plan = stylizer.plan(image.shape[-2], image.shape[-1], *options)
                    if not plan.tiled:
                        check_fits(stylizer, (1, *image.shape), source)
                if plan.tiled:
                    frames.append(stylize_tiled(stylizer.tiler, np.asarray(tensor_to_pil(image)), plan,
                                                progress=False))
                else:
                    frames.append(np.asarray(tensor_to_pil(stylizer(image.unsqueeze(0))[0])))
        except (OSError, RuntimeError, ValueError) as exc:
            if isinstance(exc, UserError) or getattr(exc, "errno", None):
                raise
            raise ImageError(f"{source}: not a readable video ({ffmpeg_reason(exc)})") from None
        if not frames:
            raise ImageError(f"{source}: video has no frames")
        if target.suffix.lower() == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, extension=target.suffix, fps=fps)

    atomic_write(target, write)
    return target
