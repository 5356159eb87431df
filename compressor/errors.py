"""The one error type users see, and the translation of library and third-party failures into it.

Every expected failure reaches the user as one line,
``error: <file | key | --option>: <what is wrong> (<what to do>)``. Library code raises
:class:`UserError`, or an exception whose message already names the file or key; a setting is named as
`max_memory` (the keyword a Python caller passes; the CLI prints it as ``--max-memory``);
:func:`user_error` turns either into one line. Anything else is a bug: the CLI prints a short
message, exits 1 and keeps the traceback in a log file. Leaf module: no torch import.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

_PACKAGES = ("compressor", "exports", "evaluation", "benchmarks")
_ROOT = Path(__file__).resolve().parents[1]


class UserError(ValueError):
    """A failure the user can fix: ``where`` names the file, key or option; ``hint`` says what to do."""

    def __init__(self, where: str | object, what: str, hint: str | None = None):
        self.where, self.what, self.hint = str(where), what, hint
        super().__init__(self.line())

    def line(self) -> str:
        what = one_line(self.what)
        text = f"{self.where}: {what}" if self.where else what
        return f"{text} ({self.hint})" if self.hint else text


def one_line(text: str) -> str:
    """Collapse a multi-line message (a list of bad keys or layers) into one line."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return " ".join(p if p.endswith(":") or i == len(parts) - 1 else p + ";" for i, p in enumerate(parts)).strip()


# Torch's weights-only refusal suggests re-running with weights_only=False: the one thing never to suggest.
_UNSAFE = re.compile(r"[^.;()]*weights_only[^.;()]*False[^.;()]*[.;]?", re.IGNORECASE)


def strip_unsafe_advice(text: str) -> str:
    return re.sub(r"\(\s*\)", "", _UNSAFE.sub("", text)).strip()


def pydantic_line(exc, names: dict[str, str] | None = None, where: str = "") -> str:
    """``key: message (got value)`` for every error of a pydantic ValidationError, on one line.

    ``names`` maps a field path to what the user typed (``steps`` -> ``--steps``); other keys are
    prefixed with ``where``.
    """
    names = names or {}
    items = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        top = str(err["loc"][0]) if err["loc"] else ""
        key = names.get(loc) or names.get(top) or (f"{where}.{loc}" if where and loc else where or loc or "(top level)")
        got = err.get("input")
        shown = f" (got {got!r})" if isinstance(got, int | float | str) and err["type"] != "missing" else ""
        items.append(f"{key}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(items)


def user_error(exc: BaseException) -> UserError | None:
    """The UserError an exception stands for, or None when it is unexpected (a bug)."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return UserError(where or "disk", "no space left on device",
                             "free some space and run again; nothing partial was kept")
        if exc.filename is not None:
            return UserError(where, (exc.strerror or str(exc)).lower(), _OS_HINTS.get(type(exc)))
        return UserError("", str(exc)) if _ours(exc) else None
    if isinstance(exc, MemoryError):
        return UserError("memory", "ran out of memory", "use a smaller `size` or `batch_size`")
    if type(exc).__name__ == "ValidationError" and hasattr(exc, "errors"):  # pydantic, raised outside the CLI
        return UserError("", pydantic_line(exc, where=getattr(exc, "title", "")))
    if isinstance(exc, ValueError | TypeError | RuntimeError) and _ours(exc):
        return UserError("", strip_unsafe_advice(str(exc)))
    return None


_OS_HINTS = {PermissionError: "check its permissions", FileNotFoundError: "check the path",
             IsADirectoryError: "give a file, not a folder", NotADirectoryError: "a part of the path is a file"}


def _ours(exc: BaseException) -> bool:
    """Raised by this project (its class lives here, or its last frame is in our code) with a message.

    A ValueError our code raises names a file or key; one from deep inside torch does not, and is a bug.
    """
    if not str(exc):
        return False
    if type(exc).__module__.split(".")[0] in _PACKAGES:
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return path.is_relative_to(_ROOT) and path.relative_to(_ROOT).parts[0] in _PACKAGES
