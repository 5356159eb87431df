"""A static web page that stylizes photos in the browser with an artifact (``styleslim export --format web``).

The folder holds ``index.html``, one JS module (``styleslim.js``: the runtime wrapper and the page), the web
runtime's files under ``runtimes/`` (copied from the pinned npm packages), the artifact with its manifest and
``page.json`` (which runtime, which inputs, fixed size or not). It works offline from any static host; WASM
threads need the host to send the cross-origin isolation headers (``_headers`` lists them for hosts that read
that file), else the runtimes run one thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from compressor.io import atomic_output, write_json
from compressor.models import get_family
from compressor.models.arbitrary import PREDICTOR_SIZE, predictor_path
from exports.backends import get_backend
from exports.backends.browser import ASSETS, ISOLATION_HEADERS, NODE_MODULES, RUNTIME_FILES, runtime_files_missing
from exports.common import ExportError
from exports.manifest import manifest_path, read_manifest
from exports.runtime import is_artifact
from exports.stage import export_artifact

WEB_RUNTIMES = {get_backend(runtime).format: runtime for runtime in RUNTIME_FILES}  # format -> its web runtime
PAGE_FILES = ("index.html", "styleslim.js")
PREDICTOR = "style_predict.onnx"  # an arbitrary-style network's style predictor, run in the page (ONNX Runtime Web)
STYLE_SIZE = 256  # a style image's side where the artifact takes any


def export_web_page(source: str | Path, out_dir: str | Path, runtime: str | None = None,
                    size: int = 512) -> tuple[Path, dict[str, Any]]:
    """Write the page for ``source`` (a model folder, or an ONNX/TFLite artifact) into ``out_dir``, replaced whole.

    A model folder is exported for ``runtime`` (default ONNX Runtime Web): as ONNX with any height and width,
    so photos run whole at their own size; as TFLite at ``size``. An artifact runs on its format's web runtime
    (a fixed-size one in tiles). Returns the page's index.html and its page.json.
    """
    source, out_dir = Path(source), Path(out_dir)
    artifact = is_artifact(source)
    manifest = read_manifest(source) if artifact else None
    if artifact:
        if manifest is None:
            raise ExportError(f"{source}: no manifest beside it (an artifact counts only with its manifest)")
        if manifest.get("tile"):
            raise ExportError(f"{source}: a tile artifact takes norm statistics as inputs; give its model folder")
        fmt = manifest["format"]
        if fmt not in WEB_RUNTIMES or (runtime and get_backend(runtime).format != fmt):
            raise ExportError(f"{source}: a {fmt} artifact; the web runtimes run "
                              + ", ".join(f"{f} ({r})" for f, r in WEB_RUNTIMES.items()))
        runtime = WEB_RUNTIMES[fmt]
    runtime = runtime or WEB_RUNTIMES["onnx"]
    problem = runtime_files_missing(runtime)
    if problem:
        raise ExportError(f"{runtime}: {problem}")
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        if artifact:
            path = tmp / source.name
            shutil.copy2(source, path)
            shutil.copy2(manifest_path(source), manifest_path(path))
        else:
            fmt = get_backend(runtime).format
            path, manifest = export_artifact(source, fmt, tmp, size=(size, size), dynamic=fmt == "onnx")
        for served, src in RUNTIME_FILES[runtime].items():
            (tmp / "runtimes" / served).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(NODE_MODULES / src, tmp / "runtimes" / served)
        for name in PAGE_FILES:
            shutil.copy2(ASSETS / name, tmp / name)
        (tmp / "_headers").write_text("/*\n" + "".join(f"  {k}: {v}\n" for k, v in ISOLATION_HEADERS.items()))
        page = page_config(manifest, path.name, runtime)
        if (page["style"] or {}).get("kind") == "vector":
            if runtime != WEB_RUNTIMES["onnx"]:
                raise ExportError(f"{source}: an arbitrary-style page runs its style predictor on onnxruntime-web; "
                                  "export it for that runtime (an ONNX artifact or the model folder)")
            shutil.copy2(predictor_path(), tmp / PREDICTOR)
        write_json(tmp / "page.json", page)
    return out_dir / "index.html", page


def page_config(manifest: dict[str, Any], artifact: str, runtime: str) -> dict[str, Any]:
    """What the page needs of the artifact: its inputs, layout, the fixed height and width it takes (None: any)
    and its style input (``style_input``)."""
    inputs = [{"name": i["name"], "shape": i["shape"]} for i in manifest["inputs"]]
    shape = inputs[0]["shape"]
    hw = shape[2:4] if manifest.get("layout", "nchw") == "nchw" else shape[1:3]
    spec = (manifest.get("source") or {}).get("spec") or {}
    return {
        "title": spec.get("style") or spec.get("family") or artifact,
        "runtime": runtime,
        "artifact": artifact,
        "layout": manifest.get("layout", "nchw"),
        "fixed": hw if all(isinstance(d, int) for d in hw) else None,
        "inputs": inputs,
        "style": style_input(inputs, spec),
        "threads": None,
    }


def style_input(inputs: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any] | None:
    """How the page fills the input beside the image: a multi-style network's style weights (a picker), an
    arbitrary-style network's style image, or the style vector the style predictor makes of one (in the page)."""
    if len(inputs) < 2:
        return None
    shape = inputs[1]["shape"]
    arbitrary = spec.get("family") and get_family(spec["family"]).role == "arbitrary_style"
    if len(shape) == 4:
        return {"kind": "image", "size": shape[2] if isinstance(shape[2], int) else STYLE_SIZE}
    if arbitrary:
        return {"kind": "vector", "predictor": PREDICTOR, "size": PREDICTOR_SIZE}
    return {"kind": "weights", "count": shape[0]}
