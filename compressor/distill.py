"""One training loop for teacher training, distillation and fine-tuning.

- Training a fast-style TransformerNet from scratch: style-transfer losses, no teacher.
- Distillation: a (pruned) student also matches a teacher's outputs and features
  (TransformerNet, AdaIN, or the VGG19 loss network itself, tap by tap).
- Fine-tuning: distillation with the teacher terms at zero weight.

Runs are reproducible and resumable bit for bit: the batch of step ``s`` and
every random draw inside the step are pure functions of (seed, s, rank), and
checkpoints hold model, optimizer, scheduler and step, written atomically.
Under ``torchrun`` the same loop runs DistributedDataParallel: each rank takes
different batches, rank 0 alone writes checkpoints, logs and the model.
"""

from __future__ import annotations

import csv
import logging
import os
import types
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential
from tqdm import tqdm

from compressor.data import BUNDLED_STYLES, ContentCrops, load_image, resolve_images, sample_style_path
from compressor.losses import LossWeights, StyleTransferLoss, adain_style_loss, content_loss, tv_loss
from compressor.models import AdaINNet, TransformerNet, VGG19LossNet, load_model, save_model
from compressor.models.adain import adaptive_instance_norm
from compressor.errors import UserError
from compressor.models.checkpoint import atomic_write, init_adain_encoder_from_vgg, load_weights_only
from compressor.models.transformer_net import ResidualBlock

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.csv"
TENSORBOARD_DIR = "tensorboard"
# Settings that do not change the numbers of a run: they may differ when resuming.
_RESUME_FREE = {"steps", "checkpoint_every", "tensorboard", "grad_checkpointing"}


class TrainConfig(BaseModel):
    """Hyper-parameters of a training, distillation or fine-tuning run."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(4, ge=1, description="Per rank under torchrun.")
    crop: int = Field(256, ge=16, description="Side of the square training crops.")
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 0
    checkpoint_every: int = Field(100, ge=1)
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(1e5, ge=0, description="Gram style loss weight (TransformerNet).")
    adain_style_weight: float = Field(10.0, ge=0, description="AdaIN mean/std style loss weight (AdaIN).")
    tv_weight: float = Field(1e-3, ge=0)
    output_weight: float = Field(0.0, ge=0, description="L1 between student and teacher outputs.")
    perceptual_weight: float = Field(0.0, ge=0, description="VGG feature MSE between student and teacher outputs.")
    feature_weight: float = Field(1.0, ge=0, description="Relative MSE of student taps to teacher taps (VGG19).")
    bf16: bool = Field(False, description="bf16 autocast (fast on CPUs with AMX and on GPUs).")
    grad_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, slower.")
    tensorboard: bool = Field(False, description="Also log to TensorBoard (when the tensorboard package is installed).")

    def loss_weights(self) -> LossWeights:
        return LossWeights(content=self.content_weight, style=self.style_weight, tv=self.tv_weight)


Objective = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _finish(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    terms["total"] = sum(terms.values())
    return terms


def _teacher_terms(
    config: TrainConfig, vgg: VGG19LossNet, output: torch.Tensor, target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Output L1 and VGG perceptual MSE of the student's output to the teacher's."""
    terms: dict[str, torch.Tensor] = {}
    if config.output_weight:
        terms["output"] = config.output_weight * (output - target).abs().mean()
    if config.perceptual_weight:
        with torch.no_grad():
            target_feats = vgg(target)
        feats = vgg(output)
        terms["perceptual"] = config.perceptual_weight * content_loss(feats, target_feats, {k: 1.0 for k in feats})
    return terms


def _uses_teacher(config: TrainConfig, teacher: nn.Module | None) -> bool:
    return teacher is not None and bool(config.output_weight or config.perceptual_weight)


def transformer_objective(
    config: TrainConfig,
    vgg: VGG19LossNet,
    style_grams: dict[str, torch.Tensor] | None,
    teacher: nn.Module | None = None,
) -> Objective:
    """Loss terms for an image-to-image student (TransformerNet) on a batch of content crops."""
    style_terms = (
        StyleTransferLoss(vgg, style_grams, config.loss_weights()) if style_grams is not None else None
    )
    use_teacher = _uses_teacher(config, teacher)
    if style_terms is None and not use_teacher:
        raise ValueError("nothing to learn from: give a style image (style losses) or a teacher with nonzero weights")

    def objective(student: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        output = student(batch)
        terms: dict[str, torch.Tensor] = {}
        if style_terms is not None:
            terms.update({k: v for k, v in style_terms(output, batch).items() if k != "total"})
        if use_teacher:
            with torch.no_grad():
                target = teacher(batch)
            terms.update(_teacher_terms(config, vgg, output, target))
        return _finish(terms)

    return objective


def vgg_objective(config: TrainConfig, student: VGG19LossNet, teacher: VGG19LossNet) -> Objective:
    """Feature distillation of a (pruned) VGG19: its taps, through ``projections`` where the spec has them,
    match the teacher's taps. Each tap's MSE is divided by the teacher tap's mean square so deep and
    shallow taps count alike."""
    missing = [t for t in student.spec.taps if t not in teacher.spec.taps]
    if missing:
        raise ValueError(f"student taps {missing} are not taps of the teacher VGG19 {teacher.spec.taps}")
    if not config.feature_weight:
        raise ValueError("feature_weight is 0: a VGG19 student learns only from its teacher's taps")

    def objective(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = model(batch)
        projections = _unwrap(model).projections
        with torch.no_grad():
            target = teacher(batch)
        loss = torch.zeros((), device=batch.device)
        for tap, feat in feats.items():
            pred = projections[tap](feat) if tap in projections else feat
            if pred.shape != target[tap].shape:
                raise ValueError(
                    f"tap {tap}: student gives {tuple(pred.shape[1:])}, teacher {tuple(target[tap].shape[1:])}; "
                    "a pruned tap needs spec.projections"
                )
            loss = loss + F.mse_loss(pred.float(), target[tap].float()) / target[tap].float().pow(2).mean().clamp_min(
                1e-8
            )
        return _finish({"features": config.feature_weight * loss})

    return objective


def bundled_style_images(size: int) -> list[torch.Tensor]:
    """The bundled paintings as (3, H, W) tensors whose shorter side is at least ``size``."""
    images = []
    for name in BUNDLED_STYLES:
        img = load_image(sample_style_path(name), size=2 * size)
        short = min(img.shape[1:])
        if short < size:
            img = F.interpolate(img[None], scale_factor=size / short, mode="bilinear", antialias=True)[0]
        images.append(img.clamp(0, 1))
    return images


def _style_batch(images: list[torch.Tensor], n: int, crop: int) -> torch.Tensor:
    """``n`` random ``crop``-sized crops of random style images (draws from torch's RNG)."""
    crops = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), ()))]
        _, h, w = img.shape
        top, left = int(torch.randint(h - crop + 1, ())), int(torch.randint(w - crop + 1, ()))
        crops.append(img[:, top : top + crop, left : left + crop])
    return torch.stack(crops)


def adain_objective(
    config: TrainConfig,
    vgg: VGG19LossNet,
    style_images: list[torch.Tensor],
    teacher: AdaINNet | None = None,
) -> Objective:
    """AdaIN student (pruned decoder and/or encoder) on content crops and random style crops.

    AdaIN's own losses (relu4_1 content loss to the AdaIN target t, mean/std
    style loss) are judged by the teacher's encoder, or without a teacher by
    an encoder built from the reference VGG19: never by the compressed one.
    """
    judge = teacher if teacher is not None else _reference_adain(vgg)
    use_teacher = _uses_teacher(config, teacher)

    def objective(student: nn.Module, content: torch.Tensor) -> dict[str, torch.Tensor]:
        style = _style_batch(style_images, content.shape[0], config.crop).to(content.device)
        output = student(content, style)
        with torch.no_grad():
            style_taps = judge.encode_taps(style)
            target = adaptive_instance_norm(judge.encode(content), style_taps["relu4_1"])
        out_taps = judge.encode_taps(output)
        terms = {
            "content": config.content_weight * F.mse_loss(out_taps["relu4_1"], target),
            "style": config.adain_style_weight * adain_style_loss(out_taps, style_taps),
            "tv": config.tv_weight * tv_loss(output),
        }
        if use_teacher:
            with torch.no_grad():
                teacher_out = teacher(content, style)
            terms.update(_teacher_terms(config, vgg, output, teacher_out))
        return _finish(terms)

    return objective


def _reference_adain(vgg: VGG19LossNet) -> AdaINNet:
    judge = AdaINNet().to(vgg.mean.device)
    init_adain_encoder_from_vgg(judge, vgg)
    return judge.eval().requires_grad_(False)


def make_objective(
    student: nn.Module,
    teacher: nn.Module | None,
    config: TrainConfig,
    vgg: VGG19LossNet,
    style_grams: dict[str, torch.Tensor] | None,
    style_images: list[torch.Tensor] | None = None,
) -> Objective:
    """The loss for ``student``'s family. ``teacher`` None (or zero teacher weights) is plain fine-tuning.

    AdaIN students see random crops of ``style_images`` (default: the bundled
    paintings); an AdaIN encoder as wide as the teacher's stays frozen.
    """
    if teacher is not None:
        teacher.eval().requires_grad_(False)
        if type(teacher) is not type(student):
            raise ValueError(f"teacher is a {type(teacher).__name__}, student a {type(student).__name__}")
    if isinstance(student, TransformerNet):
        return transformer_objective(config, vgg, style_grams, teacher)
    if isinstance(student, VGG19LossNet):
        if teacher is None:
            raise ValueError("a VGG19 student needs a teacher: it learns the teacher's taps")
        return vgg_objective(config, student, teacher)
    if isinstance(student, AdaINNet):
        if teacher is not None and student.spec.encoder == teacher.spec.encoder:
            student.encoder.requires_grad_(False)
        images = style_images if style_images is not None else bundled_style_images(config.crop)
        images = [img.to(vgg.mean.device) for img in images]
        return adain_objective(config, vgg, images, teacher)
    raise TypeError(f"no distillation objective for {type(student).__name__}")


def batch_for_step(data: ContentCrops, seed: int, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
    """The batch of a step, a pure function of (seed, step, rank): resuming needs no sampler state."""
    base = _step_seed(seed, step, rank) * batch_size
    return torch.stack([data[base + j] for j in range(batch_size)])


def _step_seed(seed: int, step: int, rank: int) -> int:
    return seed * 1_000_003 + step * 7919 + rank * 104_729


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def default_device() -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group when launched by torchrun; True if this call created it."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


@contextmanager
def _grad_checkpointing(model: nn.Module, enabled: bool):
    """Recompute TransformerNet residual blocks / AdaIN encoder and decoder segments in backward."""
    patched: list[nn.Module] = []
    if enabled:
        for module in model.modules():
            if isinstance(module, ResidualBlock):
                module.forward = types.MethodType(
                    lambda self, x: checkpoint(type(self).forward, self, x, use_reentrant=False), module
                )
                patched.append(module)
        if isinstance(model, AdaINNet):
            for seq in (model.encoder, model.decoder):
                seq.forward = types.MethodType(
                    lambda self, x: checkpoint_sequential(self, 4, x, use_reentrant=False), seq
                )
                patched.append(seq)
        if not patched:
            log.warning("grad_checkpointing: nothing to checkpoint in a %s; running without", type(model).__name__)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def check_fresh_output(out_dir: str | Path, resume: bool, force: bool) -> None:
    """Refuse to silently restart over an earlier (perhaps killed) run's checkpoint."""
    ckpt = Path(out_dir) / CHECKPOINT_FILE
    if ckpt.is_file() and not resume and not force:
        raise UserError(ckpt, "an earlier run's checkpoint is here", "--resume continues it, --force starts over")


def train(
    student: nn.Module,
    objective: Objective,
    data: ContentCrops,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    meta: dict | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> list[dict[str, float]]:
    """Optimise ``student`` and save it to ``out_dir`` as spec + safetensors.

    With ``resume`` the run continues from ``out_dir/checkpoint.pt`` exactly
    where it stopped. Launched by torchrun, every rank runs this with its own
    batches and DistributedDataParallel keeps the weights in sync. The
    objective's modules must already live on ``device`` (default CPU; see
    ``default_device``). Returns the logged
    loss terms of every step of this call (this rank's).
    """
    out_dir = Path(out_dir)
    device = torch.device(device or "cpu")
    created_group = _init_distributed(device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    writer = rank == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    student.to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = _scheduler(optimizer, config)
    start = 0
    ckpt_path = out_dir / CHECKPOINT_FILE
    if resume and ckpt_path.is_file():
        start = _load_checkpoint(ckpt_path, student, optimizer, scheduler, config, device)
        log.info("resuming %s at step %d", out_dir, start)
    elif resume:
        log.warning("--resume given but %s has no checkpoint; starting from step 0", out_dir)
    model = student
    if dist.is_initialized():
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=device_ids)
    history: list[dict[str, float]] = []
    student.train()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not (progress and writer),
               desc="train")
    with _grad_checkpointing(student, config.grad_checkpointing), _Log(out_dir, start, config, writer) as run_log:
        for step in bar:
            torch.manual_seed(_step_seed(config.seed, step, rank))
            batch = batch_for_step(data, config.seed, step, config.batch_size, rank).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                terms = objective(model, batch)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            scheduler.step()
            row = {"step": step + 1, "lr": scheduler.get_last_lr()[0]}
            row.update({k: float(v.detach()) for k, v in terms.items()})
            history.append(row)
            run_log.write(row)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k not in ("step", "lr")})
            if writer and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                run_log.flush()
                _save_checkpoint(ckpt_path, student, optimizer, scheduler, step + 1, config)
    student.eval()
    if writer:
        save_model(student, out_dir, meta={**(meta or {}), "train": config.model_dump(), "steps_done": config.steps})
    if created_group:
        dist.destroy_process_group()
    return history


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int, config: TrainConfig) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": config.model_dump_json(),
    }
    atomic_write(path, lambda p: torch.save(state, p))


def _load_checkpoint(path: Path, model, optimizer, scheduler, config: TrainConfig, device: torch.device) -> int:
    state = load_weights_only(path, map_location=device)
    if not isinstance(state, dict) or not {"step", "model", "optimizer", "scheduler", "config"} <= set(state):
        raise UserError(path, "not a training checkpoint of this tool", "--force starts over")
    saved = TrainConfig.model_validate_json(state["config"])
    if saved.model_dump(exclude=_RESUME_FREE) != config.model_dump(exclude=_RESUME_FREE):
        changed = sorted(k for k, v in saved.model_dump(exclude=_RESUME_FREE).items() if getattr(config, k) != v)
        raise UserError(path, f"checkpoint was made with different settings ({', '.join(changed)})",
                        "resume with the same settings, or --force to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


class _Log:
    """Per-step loss log (CSV, plus TensorBoard if asked and installed); rank 0 only.

    On resume, CSV rows past the checkpoint are dropped so the log matches the state.
    """

    def __init__(self, out_dir: Path, start: int, config: TrainConfig, enabled: bool):
        self.path, self.start, self.enabled = out_dir / LOG_FILE, start, enabled
        self.tb_dir = out_dir / TENSORBOARD_DIR if config.tensorboard else None
        self.writer = self.tb = None

    def __enter__(self) -> _Log:
        if not self.enabled:
            return self
        kept: list[dict] = []
        if self.start and self.path.is_file():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= self.start]
        self.file = open(self.path, "w", newline="")
        if kept:
            self._start_writer(list(kept[0]))
            self.writer.writerows(kept)
        if self.tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed (pip install tensorboard); logging to %s only", self.path)
            else:
                self.tb = SummaryWriter(str(self.tb_dir), purge_step=self.start + 1)
        return self

    def _start_writer(self, fields: list[str]) -> None:
        self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        self.writer.writeheader()

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        if self.writer is None:
            self._start_writer(list(row))
        self.writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(f"train/{key}", value, row["step"])

    def flush(self) -> None:
        self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def distill_stage(ctx) -> None:
    """Recipe stage ``distill``: the pruned model (or a copy of the teacher) learns from the teacher."""
    config = ctx.recipe.distill
    teacher_dir = ctx.stage_dir("model")
    student_dir = ctx.stage_dir("prune") if ctx.recipe.prune is not None else teacher_dir
    teacher, student = load_model(teacher_dir), load_model(student_dir)
    device = default_device()
    vgg = ctx.loss_network.to(device)
    teacher.to(device)
    grams = {k: v.to(device) for k, v in ctx.style_grams.items()}
    objective = make_objective(student, teacher, config, vgg, grams)
    data = ContentCrops(resolve_images(ctx.recipe.content, "train"), config.crop)
    meta = {
        "student_from": str(student_dir),
        "teacher": str(teacher_dir),
        "style": ctx.recipe.style,
        "loss_network": vgg.weights_source,
    }
    train(student, objective, data, config, ctx.stage_dir("distill"), resume=ctx.resume, meta=meta,
          progress=ctx.progress, device=device)
