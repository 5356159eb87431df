"""The JSON manifest written beside every artifact: what it is, where it came from, and whether it was verified."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from compressor.errors import pydantic_line
from compressor.io import write_json

REQUIRED_KEYS = (
    "format", "runtime", "precision", "artifact", "source", "style", "inputs", "outputs", "layout",
    "versions", "rewrites", "parity",
)


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int | str | None] | None = None


class ManifestSchema(BaseModel):
    """What loading an artifact relies on; the rest of a manifest is description (checked when written)."""

    model_config = ConfigDict(extra="allow")
    artifact: str
    format: str
    runtime: str | None = None  # older manifests: the format's default runtime
    precision: str | None = None
    layout: Literal["nchw", "nhwc"] = "nchw"
    inputs: list[_Tensor] | None = None
    outputs: list[_Tensor] | None = None


def _check(path: Path, manifest: dict[str, Any]) -> None:
    try:
        schema = ManifestSchema.model_validate(manifest)
    except ValidationError as exc:
        raise ValueError(f"{path}: {pydantic_line(exc)} (re-export the artifact)") from None
    image = next((i for i in schema.inputs or [] if i.shape and len(i.shape) == 4), None)
    channels = None if image is None else image.shape[1 if schema.layout == "nchw" else 3]
    if channels not in (None, 3, "3"):
        raise ValueError(f"{path}: layout {schema.layout} contradicts input {image.name} of shape {image.shape} "
                         "(re-export the artifact)")


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".manifest.json")


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python, platform and the versions of ``packages`` (a backend's converter and runtime distributions)."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in packages:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def write_manifest(artifact: str | Path, manifest: dict[str, Any]) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest for {artifact} lacks {missing}")
    path = manifest_path(artifact)
    write_json(path, manifest)
    return path


def manifest_problem(artifact: str | Path) -> str | None:
    """Why ``artifact`` does not count as finished (no manifest, unreadable, incomplete), or None if it does.

    The manifest is written last, so an artifact without a valid one was interrupted or is not ours.
    """
    path = manifest_path(artifact)
    if not path.is_file():
        return f"no manifest ({path.name}): an interrupted or foreign artifact"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest {path.name} ({type(exc).__name__})"
    if not isinstance(manifest, dict):
        return f"manifest {path.name} is not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        return f"manifest {path.name} lacks {', '.join(missing)}"
    if manifest["artifact"] != Path(artifact).name:
        return f"manifest {path.name} describes {manifest['artifact']!r}, not this file"
    return None


def read_manifest(artifact: str | Path) -> dict[str, Any] | None:
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-export the artifact") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: a manifest is a JSON object; re-export the artifact")
    _check(path, manifest)
    return manifest
