"""Files without torch: atomic writes, hashing, sizes, JSON.

A leaf module (no torch, no model import), so reports and manifests can be
written by code that never loads a network. Every write goes to a temp name
beside the target, is fsynced, then renamed: readers never see half a file,
and a crash leaves only a hidden ``.name.*`` temp that discovery skips.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Where converters' own output goes (stage timers, progress bars, C++ logs); "-" leaves it on the terminal.
CONVERTER_LOG_ENV = "STYLESLIM_CONVERTER_LOG"

FILE_MODE = 0o644  # mkstemp makes 0600; artifacts are meant to be shared


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file of a folder (a bundle such as an .mlpackage)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename to ``path`` (mode 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)  # after the write: some writers (safetensors) replace the file, making it 0600
        _fsync_tree(Path(tmp))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno is None or exc.filename == str(path):
            raise
        # The temp name means nothing to the user (a full disk, say): name the file that was being written.
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (a file or a folder) and move it into place only on success.

    For converters that write the output themselves (ONNX, TFLite, Core ML bundles) and for model folders: a
    folder is replaced whole, so nothing of what was there survives, and on success the hidden temp folders that
    killed writers of ``path`` left beside it go too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: the writer wrote nothing")
        _fsync_tree(tmp)
        if tmp.is_file():
            os.chmod(tmp, FILE_MODE)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
            if stale.is_dir() and stale != tmp.parent:
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | Path, data: Any, **dumps: Any) -> Path:
    """``data`` as indented JSON with a final newline, written atomically."""
    text = json.dumps(data, indent=2, **dumps) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def path_size(path: str | Path) -> int:
    """Bytes of a file, or of every file in a folder (hidden temp files excluded)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
