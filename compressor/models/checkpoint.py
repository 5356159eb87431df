"""Model folders (``spec.json`` + ``weights.safetensors``) and foreign checkpoints.

Nothing here unpickles code: our own weights are safetensors, foreign
``.pth`` files go through ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.io import atomic_write, file_sha256, write_json
from compressor.models.registry import create_model, families, parse_spec

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"


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
    try:
        doc = json.loads(path.read_text())
        return parse_spec(doc["spec"]), doc.get("meta", {})
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a valid styleslim spec: {exc}") from exc


def load_model(directory: str | Path) -> nn.Module:
    """Rebuild a model from its folder; the result carries ``.meta`` from spec.json."""
    directory = Path(directory)
    spec, meta = read_spec(directory)
    model = create_model(spec)
    load_weights(model, load_file(str(directory / WEIGHTS_FILE)), str(directory / WEIGHTS_FILE))
    model.meta = meta
    return model.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a ``.pth``/``.pt`` file (loaded with weights_only=True)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable weights-only checkpoint ({exc})") from exc
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
    model.load_state_dict(state)


def load_any(path: str | Path, companion: str | Path | None = None) -> nn.Module:
    """A model folder, or a foreign checkpoint one of the registered families can load.

    ``companion`` is a second file some foreign formats need (AdaIN: ``decoder.pth`` beside ``vgg_normalised.pth``).
    """
    path = Path(path)
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
