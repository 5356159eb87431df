"""The JSON manifest written beside every artifact: what it is, where it came from, and whether it was verified."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from compressor.io import write_json

REQUIRED_KEYS = (
    "format", "runtime", "precision", "artifact", "source", "style", "inputs", "outputs", "layout",
    "versions", "rewrites", "parity",
)


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
    return manifest
