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


def read_manifest(artifact: str | Path) -> dict[str, Any] | None:
    path = manifest_path(artifact)
    return json.loads(path.read_text()) if path.is_file() else None
