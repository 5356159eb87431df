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
import math
import os
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import ValidationError
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential
from tqdm import tqdm

from compressor import judge  # noqa: F401  (registers the judge's distillation terms)
from compressor.config import TrainConfig
from compressor.data import ContentCrops
from compressor.errors import UserError
from compressor.io import atomic_write
from compressor.models import create_model, get_family, load_model, save_model
from compressor.models.registry import Objective
from compressor.outputs import check_model_dir
from compressor.safeload import load_weights_only

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.csv"
TENSORBOARD_DIR = "tensorboard"
# Settings that do not change the numbers of a run: they may differ when resuming.
_RESUME_FREE = {"steps", "checkpoint_every", "tensorboard", "grad_checkpointing"}
SEARCH_WINNER = "winner"  # the student search's winner, a model folder in its stage folder


def make_objective(
    student: nn.Module,
    teacher: nn.Module | None,
    config: TrainConfig,
    vgg: nn.Module,
    style_grams: dict[str, torch.Tensor] | None,
    style_images: list[torch.Tensor] | None = None,
    any_teacher: bool = False,
) -> Objective:
    """The loss for ``student``'s family (its ``objective`` hook). ``teacher`` None (or zero teacher weights)
    is plain fine-tuning; arbitrary-style students see random crops of ``style_images``. ``any_teacher``: a
    student the recipe named may learn from a teacher of another architecture (or a black-box ONNX one)."""
    if teacher is not None:
        teacher.eval().requires_grad_(False)
        if not any_teacher and type(teacher) is not type(student):
            raise ValueError(f"teacher is a {type(teacher).__name__}, student a {type(student).__name__}")
    return get_family(student).objective(student, teacher, config, vgg, style_grams, style_images)


def batch_for_step(data: ContentCrops, seed: int, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
    """The batch of a step, a pure function of (seed, step, rank): resuming needs no sampler state."""
    base = _step_seed(seed, step, rank) * batch_size
    return torch.stack([data[base + j] for j in range(batch_size)])


def _step_seed(seed: int, step: int, rank: int) -> int:
    return seed * 1_000_003 + step * 7919 + rank * 104_729


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant, or cosine from ``lr`` to 0 over ``config.steps``: a function of the step and this config alone, so a
    run resumed with more steps anneals over the new length (a checkpoint keeps only the step)."""
    if config.lr_schedule == "cosine":
        def cosine(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def default_device() -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@dataclass
class TrainingRun:
    """One place that sets a training run up: this rank's device, with the loss network, teacher and Grams on it."""

    device: torch.device
    vgg: nn.Module | None = None
    teacher: nn.Module | None = None
    grams: dict[str, torch.Tensor] | None = None


def prepare_run(vgg: nn.Module | None, teacher: nn.Module | None = None,
                grams: dict[str, torch.Tensor] | None = None) -> TrainingRun:
    """Pick the device (``default_device``) and move what the objective will use onto it.

    Teacher training, ``train``, distillation, pruning's fine-tuning and QAT all start here, so all use a GPU
    when there is one; pass ``run.device`` to ``train``.
    """
    device = default_device()
    return TrainingRun(
        device=device,
        vgg=vgg.to(device) if vgg is not None else None,
        teacher=teacher.to(device) if teacher is not None else None,
        grams={k: v.to(device) for k, v in grams.items()} if grams is not None else None,
    )


def _init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group when launched by torchrun; True if this call created it."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


@contextmanager
def _grad_checkpointing(model: nn.Module, enabled: bool):
    """Recompute the family's ``checkpoint_modules`` in backward (``nn.Sequential`` ones in 4 segments)."""
    patched: list[nn.Module] = []
    if enabled:
        for module in get_family(model).checkpoint_modules(model):
            if isinstance(module, nn.Sequential):
                module.forward = types.MethodType(
                    lambda self, x: checkpoint_sequential(self, 4, x, use_reentrant=False), module
                )
            else:
                module.forward = types.MethodType(
                    lambda self, x: checkpoint(type(self).forward, self, x, use_reentrant=False), module
                )
            patched.append(module)
        if not patched:
            log.warning("grad_checkpointing: nothing to checkpoint in a %s; running without", type(model).__name__)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def check_fresh_output(out_dir: str | Path, resume: bool, force: bool) -> None:
    """Refuse to silently restart over an earlier (perhaps killed) run's checkpoint, or to train into a folder
    that holds another model (its files would be mixed with this one's); ``force`` lets the caller replace it."""
    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT_FILE
    if ckpt.is_file() and not resume and not force:
        raise UserError(ckpt, "an earlier run's checkpoint is here", "`resume` continues it, `force` starts over")
    if not resume:
        check_model_dir(out_dir, force)


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
    objective's modules must already live on ``device`` (default CPU; ``prepare_run``
    picks the device and moves them). Returns the logged
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
        log.warning("`resume` given but %s has no checkpoint; starting from step 0", out_dir)
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
            if not bool(torch.isfinite(terms["total"])):
                bad = [k for k, v in terms.items() if k != "total" and not bool(torch.isfinite(v))]
                raise UserError(f"step {step + 1}", f"the loss is NaN/Inf ({', '.join(bad) or 'total'})",
                                "lower --lr or the loss weights; nothing of this step was saved")
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
        raise UserError(path, "not a training checkpoint of this tool", "`force` starts over")
    saved = type(config).model_validate_json(state["config"])  # a recipe's DistillStage, or a TrainConfig
    if saved.model_dump(exclude=_RESUME_FREE) != config.model_dump(exclude=_RESUME_FREE):
        changed = sorted(k for k, v in saved.model_dump(exclude=_RESUME_FREE).items() if getattr(config, k) != v)
        raise UserError(path, f"checkpoint was made with different settings ({', '.join(changed)})",
                        "resume with the same settings, or `force` to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    # a checkpoint of the earlier CosineAnnealingLR holds no lr_lambdas: its step is what counts
    scheduler.load_state_dict(state["scheduler"] | {"lr_lambdas": [None] * len(scheduler.lr_lambdas)})
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


def distill_teacher(config, teacher_dir: Path) -> nn.Module:
    """The teacher: the black-box ``teacher_onnx`` (ONNX Runtime, extra inputs fixed by ``teacher_inputs``), else
    the model stage's model (a multi-style network's style is fixed there, by ``model.select_style``)."""
    if config.teacher_onnx:
        from compressor.blackbox import OnnxTeacher

        try:
            return OnnxTeacher(config.teacher_onnx, config.teacher_inputs)
        except ValueError as exc:
            raise UserError("distill.teacher_onnx", str(exc), "give an image-in, image-out .onnx") from None
    return load_model(teacher_dir)


def named_student(choice, seed: int, key: str, teacher: nn.Module) -> nn.Module:
    """A fresh student of a recipe-named family and spec; its initial weights are part of the run (seeded).

    ``init: teacher_trunk`` starts its residual blocks as ``teacher``'s (the families' ``graft`` hooks)."""
    torch.manual_seed(seed)
    try:
        student = create_model({"family": choice.family, **choice.spec})
    except ValidationError as exc:  # e.g. "spec.blocks: Input should be less than or equal to 16"
        problems = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        raise UserError(key, problems, "see the family's spec fields") from None
    except ValueError as exc:
        raise UserError(key, str(exc).splitlines()[0], "see the family's spec fields") from None
    if choice.init == "teacher_trunk":
        if not hasattr(teacher, "spec"):
            raise UserError(f"{key}.init", "teacher_trunk needs the model stage's teacher, not a black-box ONNX one",
                            "drop distill.teacher_onnx, or init: random")
        try:
            theirs = get_family(teacher)
            grafted = get_family(student).graft(student, theirs.residual_trunk(teacher), theirs.output_layers(teacher))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{key}.init", str(exc), "or init: random") from None
        log.info("%s: %d residual blocks start as the teacher's", key, grafted)
    return student
