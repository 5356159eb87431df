"""Any ONNX style model as a teacher: its outputs come from ONNX Runtime, no gradients flow through it.

This lets a styleslim student learn models styleslim has no family for. The
graph must map one RGB [0, 1] NCHW image to one image of the same size; other
inputs (e.g. ``style_weights`` of ``multistyle26.onnx``) are held fixed, given
as a list of numbers (reshaped to the input's shape) or an integer K, which
means one-hot K over the input's length. Graphs with a fixed batch of 1 run
sample by sample; graphs with a fixed image size refuse other sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.models.checkpoint import resolve_model_path

_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(float16)": np.float16}


def _fixed(value: int | list[float], shape: list, dtype: str, name: str) -> np.ndarray:
    """The array fed to a fixed extra input: one-hot K, or the given numbers in the input's shape."""
    dims = [d if isinstance(d, int) else None for d in shape]
    size = int(np.prod([d for d in dims if d is not None])) if dims else 1
    if isinstance(value, int):
        if not 0 <= value < size:
            raise ValueError(f"input {name!r}: one-hot index {value} is outside 0..{size - 1}")
        array = np.zeros(size)
        array[value] = 1.0
    else:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
        if array.size != size:
            raise ValueError(f"input {name!r}: {array.size} numbers given, the graph takes {size}")
    return array.reshape([d if d is not None else 1 for d in dims] or []).astype(_NUMPY.get(dtype, np.float32))


class OnnxTeacher(nn.Module):
    """``forward(x)`` -> ONNX Runtime's output for ``x`` (a float tensor on x's device, no autograd history)."""

    def __init__(self, path: str | Path, fixed_inputs: dict[str, int | list[float]] | None = None,
                 threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        self.path = resolve_model_path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 (ORT raises its own, unrelated types for unreadable / invalid graphs)
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        fixed_inputs = dict(fixed_inputs or {})
        inputs = self.session.get_inputs()
        images = [i for i in inputs if len(i.shape) == 4 and i.name not in fixed_inputs]
        if len(images) != 1:
            raise ValueError(f"{self.path}: expected one NCHW image input besides the fixed ones, found "
                             f"{[i.name for i in images] or 'none'} (name the others under teacher_inputs)")
        self.image = images[0]
        unknown = set(fixed_inputs) - {i.name for i in inputs}
        if unknown:
            raise ValueError(f"{self.path}: no input named {', '.join(sorted(unknown))}")
        missing = [i.name for i in inputs if i is not self.image and i.name not in fixed_inputs]
        if missing:
            raise ValueError(f"{self.path}: input {', '.join(missing)} needs a fixed value (teacher_inputs)")
        self.fixed = {i.name: _fixed(fixed_inputs[i.name], i.shape, i.type, i.name) for i in inputs
                      if i.name in fixed_inputs}
        outputs = self.session.get_outputs()
        self.output = outputs[0].name
        self.batch_one = self.image.shape[0] == 1
        self.size = tuple(d if isinstance(d, int) else None for d in self.image.shape[2:])
        if self.image.shape[1] not in (3, None) and isinstance(self.image.shape[1], int):
            raise ValueError(f"{self.path}: image input {self.image.name!r} has {self.image.shape[1]} channels, not 3")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for got, want in zip(x.shape[2:], self.size):
            if want is not None and got != want:
                raise ValueError(f"{self.path}: the graph takes {self.size} images, got {tuple(x.shape[2:])} "
                                 "(set the crop / size to the graph's size)")
        array = x.detach().float().cpu().numpy()
        chunks = np.split(array, array.shape[0]) if self.batch_one else [array]
        out = [self.session.run([self.output], {self.image.name: c, **self.fixed})[0] for c in chunks]
        return torch.from_numpy(np.concatenate(out).astype(np.float32)).to(x.device)


class TeacherPairs(torch.utils.data.Dataset):
    """Aligned crops of (photo, teacher output) with the teacher run ONCE on each whole photo at ``size``.

    Why: a style network with instance norms draws a crop differently from the same region of the whole
    image, and fidelity is judged on whole images; running the teacher once per photo (and its mirror
    image) also takes it out of the training loop. Items are 6-channel tensors, input RGB then target RGB
    (an objective that knows pairs splits them); crops keep the photo's pixel scale.
    """

    def __init__(self, paths: list[Path], teacher: nn.Module, size: int, crop: int, length: int = 10_000):
        from compressor.data import load_image

        self.pairs = []
        device = next(teacher.parameters(), torch.empty(0)).device  # an OnnxTeacher has none: CPU
        with torch.no_grad():
            for path in paths:
                image = load_image(path, size=size)
                image = image[:, : image.shape[1] // 16 * 16, : image.shape[2] // 16 * 16]
                for view in (image, image.flip(-1)):
                    self.pairs.append(torch.cat([view, teacher(view[None].to(device))[0].cpu().clamp(0, 1)]))
        if any(min(p.shape[1:]) < crop for p in self.pairs):
            raise ValueError(f"crop {crop} is larger than a training photo at size {size}")
        self.crop, self.length = crop, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        import random

        rng = random.Random(index)
        pair = self.pairs[rng.randrange(len(self.pairs))]
        _, h, w = pair.shape
        top, left = rng.randint(0, h - self.crop), rng.randint(0, w - self.crop)
        return pair[:, top: top + self.crop, left: left + self.crop]
