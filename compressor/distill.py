"""One training loop for teacher training, distillation and fine-tuning.

- Training a fast-style TransformerNet from scratch: style-transfer losses, no teacher.
- Distillation: a (pruned) student also matches a teacher's outputs and features.
- Fine-tuning: distillation with the teacher terms at zero weight.

Runs are reproducible and resumable bit for bit: the batch of step ``s`` is a
pure function of (seed, s), and checkpoints hold model, optimizer, scheduler,
RNG state and step, written atomically.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm import tqdm

from compressor.data import ContentCrops
from compressor.losses import LossWeights, StyleTransferLoss, content_loss
from compressor.models.checkpoint import atomic_write, save_model
from compressor.models.vgg import VGG19LossNet

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.csv"


class TrainConfig(BaseModel):
    """Hyper-parameters of a training, distillation or fine-tuning run."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(4, ge=1)
    crop: int = Field(256, ge=16, description="Side of the square training crops.")
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 0
    checkpoint_every: int = Field(100, ge=1)
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(1e5, ge=0)
    tv_weight: float = Field(1e-3, ge=0)
    output_weight: float = Field(0.0, ge=0, description="L1 between student and teacher outputs.")
    perceptual_weight: float = Field(0.0, ge=0, description="VGG feature MSE between student and teacher outputs.")
    bf16: bool = Field(False, description="bf16 autocast (fast on CPUs with AMX and on GPUs).")

    def loss_weights(self) -> LossWeights:
        return LossWeights(content=self.content_weight, style=self.style_weight, tv=self.tv_weight)


Objective = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]


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
    if style_terms is None and teacher is None:
        raise ValueError("nothing to learn from: give a style image (style losses) or a teacher")

    def objective(student: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        output = student(batch)
        terms: dict[str, torch.Tensor] = {}
        if style_terms is not None:
            terms.update({k: v for k, v in style_terms(output, batch).items() if k != "total"})
        if teacher is not None:
            with torch.no_grad():
                target = teacher(batch)
            if config.output_weight:
                terms["output"] = config.output_weight * (output - target).abs().mean()
            if config.perceptual_weight:
                with torch.no_grad():
                    target_feats = vgg(target)
                feats = vgg(output)
                terms["perceptual"] = config.perceptual_weight * content_loss(
                    feats, target_feats, {k: 1.0 for k in feats}
                )
        terms["total"] = sum(terms.values())
        return terms

    return objective


def batch_for_step(data: ContentCrops, seed: int, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
    """The batch of a step, a pure function of (seed, step, rank): resuming needs no sampler state."""
    base = (seed * 1_000_003 + step * 7919 + rank * 104_729) * batch_size
    return torch.stack([data[base + j] for j in range(batch_size)])


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def train(
    student: nn.Module,
    objective: Objective,
    data: ContentCrops,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    meta: dict | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Optimise ``student`` and save it to ``out_dir`` as spec + safetensors.

    With ``resume`` the run continues from ``out_dir/checkpoint.pt`` exactly
    where it stopped. Returns the logged loss terms of every step of this call.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = _scheduler(optimizer, config)
    start = 0
    ckpt_path = out_dir / CHECKPOINT_FILE
    if resume and ckpt_path.is_file():
        start = _load_checkpoint(ckpt_path, student, optimizer, scheduler, config)
        log.info("resuming %s at step %d", out_dir, start)
    elif resume:
        log.warning("--resume given but %s has no checkpoint; starting from step 0", out_dir)
    history: list[dict[str, float]] = []
    student.train()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not progress, desc="train")
    with _CsvLog(out_dir / LOG_FILE, start) as csv_log:
        for step in bar:
            batch = batch_for_step(data, config.seed, step, config.batch_size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                terms = objective(student, batch)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            scheduler.step()
            row = {"step": step + 1, "lr": scheduler.get_last_lr()[0], **{k: float(v.detach()) for k, v in terms.items()}}
            history.append(row)
            csv_log.write(row)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k not in ("step", "lr")})
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                csv_log.flush()
                _save_checkpoint(ckpt_path, student, optimizer, scheduler, step + 1, config)
    student.eval()
    save_model(student, out_dir, meta={**(meta or {}), "train": config.model_dump(), "steps_done": config.steps})
    return history


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int, config: TrainConfig) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "config": config.model_dump_json(),
    }
    atomic_write(path, lambda p: torch.save(state, p))


def _load_checkpoint(path: Path, model, optimizer, scheduler, config: TrainConfig) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = TrainConfig.model_validate_json(state["config"])
    if saved.model_dump(exclude={"steps"}) != config.model_dump(exclude={"steps"}):
        raise ValueError(f"{path}: checkpoint was made with different settings; resume with the same config")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


class _CsvLog:
    """Per-step loss log; on resume, rows past the checkpoint are dropped so the log matches the state."""

    def __init__(self, path: Path, start: int):
        self.path, self.start = path, start
        self.writer = None

    def __enter__(self) -> _CsvLog:
        kept: list[dict] = []
        if self.start and self.path.is_file():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= self.start]
        self.file = open(self.path, "w", newline="")
        if kept:
            self._start_writer(list(kept[0]))
            self.writer.writerows(kept)
        return self

    def _start_writer(self, fields: list[str]) -> None:
        self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        self.writer.writeheader()

    def write(self, row: dict) -> None:
        if self.writer is None:
            self._start_writer(list(row))
        self.writer.writerow(row)

    def flush(self) -> None:
        self.file.flush()

    def __exit__(self, *exc) -> None:
        self.file.close()
