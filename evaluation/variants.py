"""What gets evaluated: torch model folders and exported/quantized artifacts found on disk.

A variant is anything that maps a content image to a stylised one (or, for a
VGG19 loss-network variant, to features). Torch variants are model folders
(``spec.json`` + weights); artifacts are ``.onnx`` / ``.tflite`` / Core ML
files with a JSON manifest beside them, run through ``exports.runtime``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.models import get_family, load_any
from compressor.models.checkpoint import SPEC_FILE, WEIGHTS_FILE

ARTIFACT_RUNTIMES = {".onnx": "onnxruntime", ".tflite": "litert", ".mlpackage": "coreml", ".mlmodel": "coreml"}
MODEL_FOLDERS = ("teacher", "pruned", "distilled", "quantized")
ARTIFACT_FOLDERS = ("quantized", "exports")
CORE_ML_NOTE = "not measurable on Linux (Core ML predictions need macOS)"


@dataclass
class Variant:
    """One thing to evaluate; ``model`` is set for torch variants, ``manifest`` for artifacts."""

    name: str
    path: Path
    runtime: str
    family: str | None = None
    model: nn.Module | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    manifest_path: Path | None = None

    @property
    def is_artifact(self) -> bool:
        return self.model is None

    @property
    def role(self) -> str | None:
        """The family's role (``loss_network`` variants are judged by loss ranking, not by their images)."""
        return get_family(self.family).role if self.family else None

    @property
    def measurable(self) -> bool:
        """Core ML predictions need macOS; everything else runs here."""
        return not (self.runtime == "coreml" and sys.platform != "darwin")

    def runner(self, style: torch.Tensor | None, threads: int) -> Callable[[torch.Tensor], Any]:
        """A callable mapping a (1, 3, H, W) tensor to the variant's output (tensor, or dict of VGG features)."""
        family = get_family(self.family)
        if self.model is not None:
            model = self.model.eval()
            return lambda x: model(*family.inputs(x, style))
        from exports.runtime import load_runner

        params = inspect.signature(load_runner).parameters
        run = load_runner(self.path, threads=threads) if "threads" in params else load_runner(self.path)
        return lambda x: _to_torch(run(*(t.numpy() for t in family.inputs(x, style))))

    def threads_note(self, threads: int) -> int | str:
        """The thread count this variant actually ran with (artifacts: only if the runtime accepts it)."""
        if self.model is not None:
            return threads
        from exports.runtime import load_runner

        return threads if "threads" in inspect.signature(load_runner).parameters else "runtime default"


def _to_torch(output: Any) -> Any:
    """Runner output (an array, or a dict of arrays for multi-output graphs such as VGG taps) as tensors."""
    if isinstance(output, dict):
        return {k: torch.from_numpy(np.asarray(v)) for k, v in output.items()}
    return torch.from_numpy(np.asarray(output))


def size_on_disk(path: Path) -> int:
    """Bytes of a file, of a model folder's spec + weights (not its training checkpoint), or of a bundle."""
    if path.is_file():
        return path.stat().st_size
    if (path / SPEC_FILE).is_file():
        return sum((path / name).stat().st_size for name in (SPEC_FILE, WEIGHTS_FILE))
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def artifact_variant(path: Path, name: str | None = None) -> Variant:
    """An exported artifact; its manifest (``<file>.manifest.json``, written by exports) tells family and shape."""
    from exports.manifest import manifest_path, read_manifest

    manifest = read_manifest(path) or {}
    family = ((manifest.get("source") or {}).get("spec") or {}).get("family")
    return Variant(name=name or path.name, path=path, runtime=ARTIFACT_RUNTIMES[path.suffix], family=family,
                   manifest=manifest, manifest_path=manifest_path(path) if manifest else None)


def torch_variant(name: str, folder: Path) -> Variant:
    model = load_any(folder)
    family = getattr(getattr(model, "spec", None), "family", None)
    return Variant(name=name, path=Path(folder), runtime="torch", family=family, model=model)


def discover(run_dir: Path) -> tuple[list[Variant], list[dict[str, str]]]:
    """Every variant a run folder holds, teacher first, and what could not be loaded (path, reason).

    Stages that did not run are simply absent; one unloadable folder does not stop the others.
    """
    found: list[Variant] = []
    skipped: list[dict[str, str]] = []

    def add(load: Callable[[], Variant], path: Path) -> None:
        try:
            found.append(load())
        except Exception as exc:
            skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})

    for name in MODEL_FOLDERS:
        if (run_dir / name / "spec.json").is_file():
            add(lambda name=name: torch_variant(name, run_dir / name), run_dir / name)
    for folder in ARTIFACT_FOLDERS:
        root = run_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            inside_bundle = any(p.suffix == ".mlpackage" for p in path.relative_to(root).parents)
            if path.suffix in ARTIFACT_RUNTIMES and not path.name.startswith(".") and not inside_bundle:
                add(lambda path=path: artifact_variant(path, f"{folder}/{path.relative_to(root)}"), path)
    return found, skipped


def load_variant(target: str | Path) -> Variant:
    """A model folder, a foreign ``.pth`` checkpoint, or an artifact file (for ad-hoc ``styleslim evaluate``)."""
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model folder or artifact")
    if path.suffix in ARTIFACT_RUNTIMES:
        return artifact_variant(path)
    return torch_variant(path.name or str(path), path)
