"""Artifacts in a real browser: a headless Chromium, driven by Selenium, runs them on the web runtimes.

A local server on 127.0.0.1 serves the measurement page (``exports/web_assets/harness.html``), the runtime
wrapper it shares with exported web pages (``exports/web_assets/styleslim.js``), the runtimes' files from
``web/node_modules`` (pinned in ``web/package-lock.json``, installed by ``make web``; never a CDN), the artifacts
being measured and exported pages. It sends the cross-origin isolation headers, without which the page has no
SharedArrayBuffer and the WASM runtimes run one thread. Tensors cross as base64; timing happens inside the page
with ``performance.now()``.

One browser per process, started on first use and closed at exit; each artifact is loaded once (per runtime and
thread count) and stays in its page.
"""

from __future__ import annotations

import atexit
import base64
import importlib.util
import itertools
import json
import mimetypes
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from exports.backends.base import Runner
from exports.common import ExportError

NODE_MODULES = Path(__file__).resolve().parents[2] / "web" / "node_modules"
ASSETS = Path(__file__).resolve().parents[1] / "web_assets"

# What each web runtime needs beside the page: served (and exported) path -> file under web/node_modules.
RUNTIME_FILES: dict[str, dict[str, str]] = {
    "onnxruntime-web": {
        "onnxruntime-web/ort.wasm.min.mjs": "onnxruntime-web/dist/ort.wasm.min.mjs",
        "onnxruntime-web/ort-wasm-simd-threaded.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
        "onnxruntime-web/ort-wasm-simd-threaded.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
    },
    "litert-web": {
        "litert/core.js": "@litertjs/core/dist/index.js",
        "litert/wasm-utils.js": "@litertjs/wasm-utils/dist/index.js",
        **{f"litert/wasm/{name}.{ext}": f"@litertjs/core/wasm/{name}.{ext}"
           for name in ("litert_wasm_internal", "litert_wasm_threaded_internal") for ext in ("js", "wasm")},
    },
}
PACKAGES = {"onnxruntime-web": "onnxruntime-web", "litert-web": "@litertjs/core"}  # the npm package of each
ISOLATION_HEADERS = {  # SharedArrayBuffer (WASM threads) needs a cross-origin isolated page
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
SCRIPT_TIMEOUT_S = 600
DEFAULT_THREADS = min(4, os.cpu_count() or 1)  # as styleslim.js's default
DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int32": np.int32}


def missing(runtime: str) -> str | None:
    """What this machine lacks to run ``runtime`` in a browser, or None."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install 'styleslim[web]')"
    for program, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(program) is None:
            return f"{program} is not installed (Debian package {package}: make browser)"
    return runtime_files_missing(runtime)


def runtime_files_missing(runtime: str) -> str | None:
    """Which of the runtime's npm files is not installed, or None."""
    absent = [src for src in RUNTIME_FILES[runtime].values() if not (NODE_MODULES / src).is_file()]
    return f"{NODE_MODULES / absent[0]} is missing (make web installs the pinned npm packages)" if absent else None


def runtime_file(served: str) -> Path | None:
    """The file under web/node_modules served as ``runtimes/<served>``."""
    for files in RUNTIME_FILES.values():
        if served in files:
            return NODE_MODULES / files[served]
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.artifacts: dict[str, Path] = {}
        self.sites: dict[str, Path] = {}


class _Handler(BaseHTTPRequestHandler):
    """Serves only what it names: the page's assets, the runtimes' files, the registered artifacts and what is
    inside the registered folders (exported pages)."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = unquote(self.path.split("?", 1)[0]).lstrip("/")
        if path.startswith("runtimes/"):
            file = runtime_file(path.removeprefix("runtimes/"))
        elif path.startswith("artifacts/"):
            file = self.server.artifacts.get(path.removeprefix("artifacts/"))
        elif path.startswith("sites/"):
            key, _, rest = path.removeprefix("sites/").partition("/")
            root = self.server.sites.get(key)
            file = (root / (rest or "index.html")).resolve() if root else None
            file = file if file is not None and file.is_relative_to(root) else None
        else:
            file = ASSETS / path if path in {p.name for p in ASSETS.iterdir()} else None
        if file is None or not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", content_type(file.name))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet: requests are not news
        pass


def content_type(name: str) -> str:
    """JavaScript modules must be served as JavaScript and WASM as application/wasm (streaming compilation)."""
    if name.endswith((".js", ".mjs")):
        return "text/javascript"
    if name.endswith(".wasm"):
        return "application/wasm"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class Browser:
    """One headless Chromium and the server behind it; a harness tab per thread count (a WASM runtime takes its
    thread count once per page), exported pages in tabs of their own."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.server = _Server()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.profile = tempfile.mkdtemp(prefix="styleslim-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        self.driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        self.version = f"Chromium {self.driver.capabilities.get('browserVersion', '?')}"
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.harness_tabs: dict[int, str] = {}
        self.models: dict[tuple, WebModel] = {}  # loaded once per (runtime, file, threads): pages keep them
        self._blank = True  # the first tab is still free
        self._ids = itertools.count()

    def open(self, url: str) -> str:
        """Open ``url`` in a tab of its own (the first, while it is blank); returns the tab's handle."""
        if not self._blank:
            self.driver.switch_to.new_window("tab")
        self._blank = False
        self.driver.get(url)
        return self.driver.current_window_handle

    def harness(self, threads: int) -> str:
        """The harness tab whose runtimes run ``threads`` threads."""
        if threads not in self.harness_tabs:
            self.harness_tabs[threads] = self.open(self.url + "harness.html")
            self.call("return new Promise(r => { const w = () => window.harnessReady ? r(true) : setTimeout(w, 20); "
                      "w(); })")
        return self.harness_tabs[threads]

    def call(self, script: str, *args: Any, tab: str | None = None) -> Any:
        """Run an async ``script`` (its ``arguments`` are ``args``) in ``tab`` (default: the current one); a page
        exception becomes an ExportError."""
        if tab is not None and self.driver.current_window_handle != tab:
            self.driver.switch_to.window(tab)
        wrapped = ("const done = arguments[arguments.length - 1];"
                   f"(async (...arguments) => {{ {script} }})(...Array.from(arguments).slice(0, -1))"
                   ".then(v => done({value: v}), e => done({error: String((e && e.stack) || e)}));")
        result = self.driver.execute_async_script(wrapped, *args)
        if "error" in result:
            raise ExportError(f"in the browser: {result['error'].splitlines()[0]}")
        return result["value"]

    def serve(self, path: Path) -> str:
        """A URL the page can fetch ``path`` from (nothing else under its folder is served)."""
        key = f"{len(self.server.artifacts)}/{path.name}"
        self.server.artifacts[key] = Path(path).resolve()
        return self.url + "artifacts/" + key

    def serve_folder(self, folder: Path) -> str:
        """The URL of a folder served as a static site (an exported web page), with the isolation headers."""
        key = str(len(self.server.sites))
        self.server.sites[key] = Path(folder).resolve()
        return f"{self.url}sites/{key}/"

    def console_errors(self) -> list[str]:
        """The page's console errors since the last call, less LiteRT's WASM log lines (it prints its INFO and
        WARNING lines on stderr, which Chromium files as errors)."""
        chatter = re.compile(r'runtimes/litert/wasm/\S+ \S+ "(INFO|WARNING): ')
        return [e["message"] for e in self.driver.get_log("browser")
                if e["level"] == "SEVERE" and not chatter.search(e["message"])]

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            self.server.shutdown()
            shutil.rmtree(self.profile, ignore_errors=True)


_browser: Browser | None = None


def browser() -> Browser:
    """The process's browser, started on first use."""
    global _browser
    if _browser is None:
        _browser = Browser()
        atexit.register(_browser.close)
    return _browser


@dataclass
class WebModel:
    """An artifact loaded in the page: ``run`` moves tensors in and out, ``time`` runs it again inside the page."""

    browser: Browser
    tab: str
    id: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    info: dict[str, Any]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [{"b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(), "dtype": a.dtype.name,
                    "dims": list(a.shape)} for a in arrays]
        outs = self.browser.call("return harness.run(...arguments)", self.id, tensors, tab=self.tab)
        return [np.frombuffer(base64.b64decode(o["b64"]), DTYPES[o["dtype"]]).reshape(o["dims"]).copy() for o in outs]

    def time(self, runs: int) -> list[float]:
        """Milliseconds of ``runs`` runs of the last inputs, each timed inside the page."""
        times = self.browser.call("return harness.time(...arguments)", self.id, runs, tab=self.tab)
        return [float(t) for t in times]


def load_web_model(runtime: str, path: Path, threads: int) -> WebModel:
    """Load the artifact at ``path`` on ``runtime`` (``onnxruntime-web`` | ``litert-web``) in the browser."""
    problem = missing(runtime)
    if problem:
        raise ExportError(f"{runtime}: {problem}")
    page = browser()
    path = Path(path).resolve()
    key = (runtime, str(path), path.stat().st_mtime_ns, threads)
    if key not in page.models:
        tab, model_id = page.harness(threads), f"m{next(page._ids)}"
        loaded = page.call("return harness.load(...arguments)", model_id, runtime, page.serve(path), threads, tab=tab)
        info = loaded["info"] | {"version": package_version(runtime), "browser": page.version}
        page.models[key] = WebModel(page, tab, model_id, loaded["inputs"], loaded["outputs"], info)
    return page.models[key]


def package_version(runtime: str) -> str:
    """The installed (pinned) npm version of a web runtime."""
    return json.loads((NODE_MODULES / PACKAGES[runtime] / "package.json").read_text())["version"]


def web_runner(runtime: str, path: Path, threads: int | None, layout: str, manifest: dict[str, Any]) -> Runner:
    """A ``Runner`` for an artifact on a web runtime: inputs in the page's order, outputs named as the manifest
    names them, ``info`` as the page reports it, ``time_last`` on the page's clock."""
    model = load_web_model(runtime, Path(path), threads or DEFAULT_THREADS)
    in_names = [i["name"] for i in manifest.get("inputs", [])] or [i["name"] for i in model.inputs]
    out_names = [o["name"] for o in manifest.get("outputs", [])] or [o["name"] for o in model.outputs]
    shapes = [i["shape"] for i in model.inputs]
    return Runner(model.run, runtime, in_names, out_names, layout, shapes[0], shapes, info=model.info,
                  time_last=model.time)
