"""Torch-level quantization: calibration data, quality judged in torch, PT2E PTQ and QAT.

The runtime side (export, each runtime's quantizer, parity, manifests, the
mixed-precision search) is ``exports.quantize`` and ``exports.backends``.
Here: calibration images that never overlap the evaluation images, the
``QualityProbe`` (the perceptual judge in bands of the fp32 model's own
variation, PSNR, style / content loss by the reference VGG19; of a torch
module or of any runner), and QAT.

QAT fine-tunes with fake quantization (torchao PT2E, x86 int8 scheme), the
fp32 model as teacher (output L1 + perceptual terms). PT2E QAT graphs do not
export to ONNX/TFLite as quantized graphs, so the learned (quantization-aware)
float weights are carried into each runtime's own static quantizer and
re-calibrated there; the fake-quant PyTorch model's own quality is reported too.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from compressor.config import TrainConfig
from compressor.data import CalibrationSample, load_image, resolve_images, sample_content_paths, sample_inputs
from compressor.fidelity import calibrate, judge_outputs, worst_grade
from compressor.images import resize
from compressor.io import file_sha256
from compressor.judge import embed
from compressor.losses import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, content_loss, psnr, style_loss
from compressor.models import get_family, save_model

log = logging.getLogger(__name__)

class QuantizeError(ValueError):
    """A quantization request that cannot be honoured; the message names the file, layer or setting."""


# ---------------------------------------------------------------- data


def check_disjoint(images: list[Path], evaluation: list[Path], role: str = "calibration") -> None:
    """Refuse ``role`` images (calibration, a budget's) that are evaluation images (same file or same bytes)."""
    eval_hashes = {file_sha256(p): p for p in evaluation}
    eval_paths = {Path(p).resolve() for p in evaluation}
    for path in images:
        twin = eval_hashes.get(file_sha256(path))
        if Path(path).resolve() in eval_paths or twin is not None:
            raise QuantizeError(f"{path} is both a {role} image and an evaluation image ({twin or path}); keep the "
                                f"{role} images apart from those the evaluation grades")


def image_batch(paths: list[Path], size: int) -> list[torch.Tensor]:
    """(1, 3, size, size) tensors, resized as the parity check resizes."""
    return [resize(load_image(p).unsqueeze(0), (size, size)) for p in paths]


def calibration_set(source: str | Path | None, size: int) -> tuple[list[np.ndarray], list[Path]]:
    """Calibration arrays from a folder (or the bundled train split), checked disjoint from the eval split."""
    paths = resolve_images(source, "train")
    check_disjoint(paths, sample_content_paths("eval"))
    return [x.numpy() for x in image_batch(paths, size)], paths


def calibration_samples(model: nn.Module, images: list[np.ndarray]) -> list[CalibrationSample]:
    """What a quantizer calibrates ``model``'s graph on: the images, or for a network of several styles an
    (image, one-hot style) per style, images in turn, so that every style's activation ranges are seen."""
    family = get_family(model)
    n_styles = family.n_styles(model)
    if n_styles == 1:
        return images
    return [(images[i % len(images)], family.style_mix(model, str(i % n_styles)).numpy())
            for i in range(max(n_styles, len(images)))]


def probe_styles(model: nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """The style inputs quality is probed under: none for one style, else the first, middle and last styles."""
    family = get_family(model)
    n_styles = family.n_styles(model)
    if n_styles == 1:
        return [()]
    return [(family.style_mix(model, str(s)),) for s in sorted({0, n_styles // 2, n_styles - 1})]


# ---------------------------------------------------------------- norm-input equalization


class _NormInputStatistics(TorchFunctionMode):
    """Per-channel sums of every Conv2d output that is fed straight into ``F.instance_norm``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.sums: dict[str, torch.Tensor] = {}  # conv name -> [sum, sum of squares, count] per channel
        self.eps: dict[str, float] = {}
        self._outputs: dict[int, tuple[str, torch.Tensor]] = {}
        self._hooks = [m.register_forward_hook(self._record(name)) for name, m in model.named_modules()
                       if isinstance(m, nn.Conv2d)]

    def _record(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self._outputs[id(output)] = (name, output)  # the tensor is kept, so its id cannot be reused meanwhile
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.instance_norm:
            name, output = self._outputs.pop(id(args[0]), (None, None))
            if output is args[0]:
                x = args[0].detach().double().transpose(0, 1).flatten(1)
                total = torch.stack([x.sum(1), (x * x).sum(1), torch.full_like(x[:, 0], x.shape[1])])
                self.sums[name] = self.sums.get(name, 0) + total
                self.eps[name] = kwargs["eps"] if kwargs and "eps" in kwargs else (args[7] if len(args) > 7 else 1e-5)
        return func(*args, **(kwargs or {}))

    def forget_outputs(self) -> None:
        self._outputs.clear()

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self.forget_outputs()


def equalize_norm_inputs(model: nn.Module, calibration: list[CalibrationSample]) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` whose convs feeding an instance norm give every output channel unit spread.

    Static int8 quantizes a conv's output with one scale per tensor. Before an instance norm, channels differ in
    spread (the norm is what evens them out), so the quiet ones keep only a few int8 steps, and the norm then
    amplifies that rounding back to unit variance. Instance norm is blind to a per-channel scale, so dividing
    each output channel's weights by its calibrated spread changes nothing downstream (beyond the norm's eps,
    hence channels whose variance is near eps are left alone), while every channel now spans the same range.
    Returns the copy and the convs rescaled.
    """
    model = copy.deepcopy(model).eval()
    stats = _NormInputStatistics(model)
    try:
        with torch.no_grad(), stats:
            for sample in calibration:
                model(*map(torch.from_numpy, sample_inputs(sample)))
                stats.forget_outputs()  # the convs not feeding a norm (RGB output): no use past this image
    finally:
        stats.close()
    convs = dict(model.named_modules())
    for name, (total, squares, count) in stats.sums.items():
        conv = convs[name]
        variance = squares / count - (total / count) ** 2
        keep = variance < 1e4 * stats.eps[name]  # else eps, no longer negligible after rescaling, shifts the output
        scale = torch.where(keep, torch.ones_like(variance), variance.clamp_min(1e-30).rsqrt())
        with torch.no_grad():
            conv.weight.mul_(scale.to(conv.weight.dtype).view(-1, *[1] * (conv.weight.dim() - 1)))
            if conv.bias is not None:
                conv.bias.mul_(scale.to(conv.bias.dtype))
    return model, sorted(stats.sums)


# ---------------------------------------------------------------- quality


class QualityProbe:
    """How far a run strays from ``model`` on ``photos`` (never the evaluation's): the perceptual judge's distances
    in units of the model's own same-picture band on them and their grade, PSNR, and the rise of style / content
    loss by the reference VGG19. A network of several styles is probed under ``probe_styles``, graded by its worst
    style."""

    def __init__(self, model: nn.Module, vgg: nn.Module | None, grams: dict[str, torch.Tensor] | None, size: int,
                 photos: list[Path]):
        self.vgg, self.grams = vgg, grams  # no loss network: no style / content columns
        self.images = image_batch(photos, size)
        self.styles = probe_styles(model)
        self.items = [(x, *style) for style in self.styles for x in self.images]  # the graph inputs, style by style
        with torch.no_grad():
            self.reference = [model(*item) for item in self.items]
            pictures = [r.clamp(0, 1) for r in self.reference]
            self.embeddings = [embed(p) for p in pictures]
            n = len(self.images)
            self.calibrations = [calibrate(lambda x, style=style: model(x, *style), self.images,
                                           pictures[k * n:(k + 1) * n], self.embeddings[k * n:(k + 1) * n])
                                 for k, style in enumerate(self.styles)]
        self.baseline = self._losses(self.reference) if vgg is not None else None

    def _losses(self, outputs: list[torch.Tensor]) -> dict[str, float]:
        style = content = 0.0
        with torch.no_grad():
            for out, (x, *_) in zip(outputs, self.items):
                feats, target = self.vgg(out), self.vgg(x)
                style += float(style_loss(feats, self.grams, DEFAULT_STYLE_LAYERS))
                content += float(content_loss(feats, target, DEFAULT_CONTENT_LAYERS))
        return {"style": style / len(outputs), "content": content / len(outputs)}

    def __call__(self, run) -> dict[str, float | str]:
        """Quality of ``run`` (NCHW numpy -> NCHW numpy, or a torch module) relative to the fp32 model."""
        if isinstance(run, nn.Module):
            with torch.no_grad():
                outputs = [run(*item) for item in self.items]
        else:
            outputs = [torch.from_numpy(np.asarray(run(*(t.numpy() for t in item)), dtype=np.float32))
                       for item in self.items]
        n = len(self.images)
        with torch.no_grad():
            per_style = [judge_outputs(outputs[k * n:(k + 1) * n], self.embeddings[k * n:(k + 1) * n], calibration)
                         for k, calibration in enumerate(self.calibrations)]
        quality = {k: float(np.mean([j[k] for j in per_style]))
                   for k in ("perceptual_bands", "style_bands", "vector_bands")}
        quality["grade"] = worst_grade([j["grade"] for j in per_style])
        quality["psnr_db"] = min(200.0, *(psnr(o.clamp(0, 1), r.clamp(0, 1)) for o, r in zip(outputs, self.reference)))
        if self.baseline is not None:
            losses = self._losses(outputs)
            for key in ("style", "content"):
                rise = (losses[key] - self.baseline[key]) / max(self.baseline[key], 1e-12)
                quality[f"{key}_increase_pct"] = 100 * rise
        return quality


# ---------------------------------------------------------------- QAT


class _QATModule(nn.Module):
    """A PT2E fake-quant graph that ``distill.train`` can drive: train()/eval() switch its fake-quant behaviour."""

    def __init__(self, graph: nn.Module, float_model: nn.Module):
        super().__init__()
        self.graph = graph
        self.spec = float_model.current_spec()

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """The image alone: a single-style network ignores the style its family's objective passes (as its float
        forward does); multi-input networks are refused before training."""
        return self.graph(x)

    def train(self, mode: bool = True) -> _QATModule:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        self.training = mode
        return self

    def current_spec(self):
        return self.spec


def _pt2e_graph(model: nn.Module, qat: bool, example: torch.Tensor) -> nn.Module:
    """``model`` exported (dynamic batch and size) and prepared for torchao's x86 int8 scheme (u8 act, s8 per-channel w)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    dynamic = torch.export.Dim.DYNAMIC  # train on crops, evaluate on full images
    graph = torch.export.export(copy.deepcopy(model).eval(), (example,),
                                dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=qat))
    return (prepare_qat_pt2e if qat else prepare_pt2e)(graph, quantizer)


def pt2e_ptq(model: nn.Module, calibration: list[np.ndarray]) -> nn.Module:
    """PyTorch's simulated int8 PTQ of ``model`` (the baseline QAT must beat, in the same scheme)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = _pt2e_graph(model, False, torch.from_numpy(np.concatenate([calibration[0]] * 2)))  # batch 2: no 0/1 specialisation
    with torch.no_grad():
        for x in calibration:
            prepared(torch.from_numpy(x))
    return convert_pt2e(prepared)


def qat_finetune(model: nn.Module, vgg: nn.Module, config: TrainConfig, out_dir: Path,
                 content: str | Path | None = None, resume: bool = False, progress: bool = True
                 ) -> tuple[nn.Module, nn.Module]:
    """Fine-tune ``model`` with int8 fake quantization (torchao PT2E), teacher = its fp32 self.

    Returns the float model carrying the learned weights (saved to ``out_dir``)
    and the converted PT2E int8 model (PyTorch's view of QAT quality).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from compressor.data import ContentCrops
    from compressor.distill import make_objective, prepare_run, train

    if get_family(model).role != "style_transformer":
        raise QuantizeError(f"QAT supports image-to-image style transformers, got {type(model).__name__}")
    example_inputs = get_family(model).example_inputs(model, 8)
    if isinstance(example_inputs, tuple) and len(example_inputs) > 1:
        raise QuantizeError(f"QAT traces the image input alone; this {type(model).__name__} also takes a style "
                            "input (keep one style first: model.select_style)")
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    example = torch.rand(config.batch_size, 3, config.crop, config.crop)
    student = _QATModule(_pt2e_graph(model, True, example), model)
    paths = resolve_images(content, "train")
    check_disjoint(paths, sample_content_paths("eval"))
    run = prepare_run(vgg, teacher)
    objective = make_objective(model, run.teacher, config, run.vgg, None)
    train(student, objective, ContentCrops(paths, config.crop), config, out_dir / "train", resume=resume,
          progress=progress, device=run.device)
    student.cpu()
    learned = copy.deepcopy(model)
    params = dict(student.graph.named_parameters())
    with torch.no_grad():
        for name, tensor in learned.state_dict().items():
            if name in params:
                tensor.copy_(params[name])
    save_model(learned, out_dir, meta={"qat": config.model_dump(), "scheme": "torchao PT2E X86Inductor int8 QAT"})
    return learned.eval(), convert_pt2e(student.graph)


def rgb_output_convs(model: nn.Module) -> list[str]:
    """Names of the convs that produce RGB (3 channels): kept float, as int8 gains nothing there and costs most."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.out_channels == 3]
