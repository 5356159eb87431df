"""Checks on where a command will write, made before it does any work.

A run that optimises for minutes and then cannot save its result is the worst kind of failure,
so every command checks its output path first: no part of it may be a regular file, a file
output may not be an existing folder, and the nearest existing folder must be writable.
"""

from __future__ import annotations

import os
from pathlib import Path

from compressor.errors import UserError


def check_output_dir(path: str | Path, option: str = "-o") -> Path:
    """``path`` can become (or already is) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}", "is a file, not a folder", "give a folder path")
    _check_parents(path, path, option)
    return path


def check_model_dir(path: str | Path, force: bool, option: str = "-o") -> Path:
    """``path`` can take a model folder: it is new or empty, or ``force`` says to replace what it holds (a model
    folder holds one model: another's checkpoint or log left beside it would be resumed or read as this one's)."""
    path = check_output_dir(path, option)
    held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if held and not force:
        raise UserError(f"{option} {path}", f"is not empty (it holds {', '.join(held[:4])}{', ...' if held[4:] else ''})",
                        "give a new folder, or `force` to replace it whole")
    return path


def check_output_file(path: str | Path, option: str = "-o", suffixes: set[str] | None = None) -> Path:
    """``path`` can be written as a file: not a folder, every parent a folder, a known suffix."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}", "is a folder, not a file", "give a file name, e.g. out.png")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"{option} {path}", f"unknown extension {path.suffix or '(none)'!r}",
                        f"use one of {', '.join(sorted(suffixes))}")
    _check_parents(path, path.parent, option)
    return path


def _check_parents(path: Path, start: Path, option: str) -> None:
    for parent in [start, *start.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path}", f"{parent} is a file, so nothing can be written under it",
                                "choose another output path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{option} {path}", f"{parent} is not writable", "choose another output path")
            return
