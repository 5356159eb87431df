"""Runtime backends (ONNX Runtime, LiteRT, Core ML, and in a browser ONNX Runtime Web and LiteRT.js), each
registered once; see ``exports.backends.base``."""

# The backends: importing a backend's module registers it. One line per runtime; a format's native runtime
# comes first (it is the format's default).
from exports.backends import onnxruntime  # noqa: F401, I001
from exports.backends import litert  # noqa: F401
from exports.backends import coreml  # noqa: F401
from exports.backends import onnxruntime_web  # noqa: F401
from exports.backends import litert_web  # noqa: F401
from exports.backends.base import (
    Backend,
    QuantizeJob,
    Runner,
    backend_for_artifact,
    backend_for_format,
    backends,
    get_backend,
    register_backend,
)

__all__ = ["Backend", "QuantizeJob", "Runner", "backend_for_artifact", "backend_for_format", "backends",
           "get_backend", "register_backend"]
