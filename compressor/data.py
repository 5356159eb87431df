"""Image I/O, folders of images and the bundled sample data.

Every image enters as float32 RGB in [0, 1], shape (3, H, W), upright as it is
displayed (EXIF orientation applied): grayscale is replicated, alpha is
composited on white, 16-bit is scaled by its type's maximum (never stretched).
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from compressor.errors import UserError, one_line
from compressor.images import crop_resize, jitter_colors
from compressor.io import atomic_write

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

# Content photos that ship inside scikit-image's wheel. Training/calibration and
# evaluation sets are disjoint so quality is never measured on seen images.
_SKIMAGE_SPLITS = {
    "train": ["chelsea.png", "coffee.png", "motorcycle_left.png", "hubble_deep_field.jpg"],
    "eval": ["astronaut.png", "rocket.jpg"],
    "val": ["camera.png", "ihc.png"],  # model selection (the student search): neither trained on nor reported
}
# ``samples-wide``: the train split plus the wheel's other images, mostly grey textures: a student copying its
# teacher generalises from more, even unlike, inputs.
_SKIMAGE_SPLITS["train_wide"] = _SKIMAGE_SPLITS["train"] + [
    "retina.jpg", "motorcycle_right.png", "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png",
    "page.png", "chessboard_RGB.png"]
BUNDLED_STYLES = {"starry_night": "starry_night.jpg", "composition_vii": "composition_vii.jpg"}


MIN_SIDE = 4  # smaller images carry nothing to stylise (and break the networks' reflection padding)


class ImageError(UserError):
    """An image that cannot be read; the message names the file."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__("", message, hint)


@contextmanager
def reading_image(path: Path) -> Iterator[None]:
    """Turn every way reading ``path`` can fail (missing, a folder, a decompression bomb, garbage) into one ImageError.

    Between Pillow's bomb warning and its bomb error (89-179 MP by default) a photo is taken without a word:
    big photos are what tiling is for, and its memory stays bounded whatever the size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too many pixels"
        raise ImageError(f"{path}: {pixels} is over Pillow's decompression-bomb limit of "
                         f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP",
                         "downscale the image first; very large images are refused for safety") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({one_line(str(exc))[:160]})") from None


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Read an image as (3, H, W) float RGB in [0, 1]; ``size`` resizes the longest side."""
    path = Path(path)
    with reading_image(path), Image.open(path) as img:
        img.load()
        rgb = to_rgb(ImageOps.exif_transpose(img))
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(f"{path}: {rgb.width}x{rgb.height} is too small", f"images need at least {MIN_SIDE} px a side")
    if size:
        scale = size / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.LANCZOS)
    return pil_to_tensor(rgb)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB, scaled by the type's maximum: 16-bit by 65535, float by 1 (a dark photo stays dark)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        full = 1.0 if img.mode == "F" else 65535.0
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64)) / full
        img = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> 8-bit RGB, clamped."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    arr = (tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


def save_image(tensor: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension (use .png or .jpg)")
    atomic_write(path, lambda p: tensor_to_pil(tensor).save(p, format=fmt))
    return path


def list_images(path: str | Path) -> list[Path]:
    """Image files in a folder (sorted), or the file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageError(f"{path}: no such file or folder")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ImageError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def sample_content_paths(split: str = "train") -> list[Path]:
    """Bundled content photos (from scikit-image's wheel): split ``train``, ``train_wide``, ``val`` or ``eval``."""
    if split not in _SKIMAGE_SPLITS:
        raise ValueError(f"unknown sample split {split!r}; choose from {sorted(_SKIMAGE_SPLITS)}")
    root = Path(str(resources.files("skimage") / "data"))
    return [root / name for name in _SKIMAGE_SPLITS[split]]


def sample_style_path(name: str = "starry_night") -> Path:
    """A bundled public-domain painting (see compressor/assets/SOURCES.md)."""
    if name not in BUNDLED_STYLES:
        raise ValueError(f"unknown bundled style {name!r}; choose from {sorted(BUNDLED_STYLES)}")
    return Path(str(resources.files("compressor") / "assets" / "styles" / BUNDLED_STYLES[name]))


def resolve_style(style: str | Path) -> Path:
    """A style given as a file path or as the name of a bundled style."""
    if str(style) in BUNDLED_STYLES:
        return sample_style_path(str(style))
    path = Path(style)
    if not path.is_file():
        raise ImageError(f"{path}: style image not found (bundled styles: {', '.join(BUNDLED_STYLES)})")
    return path


def resolve_images(source: str | Path | None, split: str = "train") -> list[Path]:
    """A folder/file of images, the bundled samples of ``split`` ("samples" or None) or, for training only,
    the bundled wide training set ("samples-wide")."""
    if source is None or str(source) == "samples":
        return sample_content_paths(split)
    if str(source) == "samples-wide":
        if split != "train":
            raise ImageError("samples-wide: the wide bundled set is for training only",
                             "use 'samples' or a folder of photos here")
        return sample_content_paths("train_wide")
    return list_images(source)


class ContentCrops(torch.utils.data.Dataset):
    """Random square crops (with resize and horizontal flips, and colour jitter when ``color_jitter`` > 0, see
    ``jitter_colors``) of a few content images.

    Images are decoded once and kept in memory; an "epoch" is ``length`` crops
    so tiny image sets still give varied batches. Each crop is a pure function
    of its index, so runs are reproducible.
    """

    def __init__(self, paths: list[Path], crop: int, length: int = 10_000, color_jitter: float = 0.0):
        self.images = [load_image(p, size=max(crop * 2, 256)) for p in paths]
        self.crop = crop
        self.length = length
        self.color_jitter = color_jitter

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = random.Random(index)
        img = self.images[rng.randrange(len(self.images))]
        _, h, w = img.shape
        side = rng.randint(min(h, w, self.crop), min(h, w))
        top, left = rng.randint(0, h - side), rng.randint(0, w - side)
        patch = crop_resize(img.unsqueeze(0), top, left, side, self.crop)
        if rng.random() < 0.5:
            patch = patch.flip(-1)
        if self.color_jitter:
            patch = jitter_colors(patch, self.color_jitter, rng)
        return patch[0].clamp(0, 1)


# One calibration sample for a quantizer: an NCHW float32 image, or a tuple of one array per graph input (the
# image, then a multi-style network's style weights).
CalibrationSample = np.ndarray | tuple[np.ndarray, ...]


def sample_inputs(sample: CalibrationSample) -> tuple[np.ndarray, ...]:
    """The graph inputs of one calibration sample, in order."""
    return sample if isinstance(sample, tuple) else (sample,)
