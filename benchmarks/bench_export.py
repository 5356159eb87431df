"""Latency of exported artifacts on their runtimes vs PyTorch eager, measured side by side in one run.

Formats: ONNX (ONNX Runtime; default rewrites: sub-pixel output conv), TFLite (LiteRT + XNNPACK) with
the default rewrites (exports.rewrites.format_rewrites: slice-pad, concat-upsample, explicit
InstanceNorm, sub-pixel output conv), with slice-pad only, and with plain MIRROR_PAD (no rewrite). Core ML runs only on macOS and is skipped
elsewhere. Models: TransformerNet and VGG19 to relu4_1, unpruned and with every
width halved (a 50%-pruned spec). Random weights: latency does not depend on them.

    python benchmarks/bench_export.py --quick   # one small model, 128 px, a few minutes
    python benchmarks/bench_export.py           # 256 and 512 px, all four models
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

try:
    import triton  # noqa: F401  (before anything that might import TensorFlow)
except ImportError:
    pass

from compressor.io import write_json
from compressor.models import TransformerNet, TransformerNetSpec, VGG19LossNet, VGG19Spec
from evaluation.latency import measure_latency
from exports.backends.litert import export_tflite
from exports.backends.onnxruntime import export_onnx
from exports.common import example_inputs
from exports.rewrites import apply_rewrites, format_rewrites
from exports.runtime import load_runner

RESULTS = Path(__file__).parent / "results"


def models(quick: bool) -> dict[str, torch.nn.Module]:
    half = TransformerNetSpec(conv1=16, conv2=32, trunk=64, res_inner=[64] * 5, deconv1=32, deconv2=16)
    found = {"transformer_net-pruned50": TransformerNet(half)}
    if quick:
        return {k: m.eval() for k, m in found.items()}
    vgg = VGG19Spec(taps=["relu4_1"])
    found = {
        "transformer_net": TransformerNet(TransformerNetSpec()),
        **found,
        "vgg19-relu4_1": VGG19LossNet(vgg),
        "vgg19-relu4_1-pruned50": VGG19LossNet(vgg.model_copy(update={"widths": [w // 2 for w in vgg.widths]})),
    }
    return {k: m.eval() for k, m in found.items()}


def latency(fn, runs: int, warmup: int = 3) -> dict[str, float]:
    stats = measure_latency({"fn": fn}, runs=runs, warmup=warmup)["fn"]
    return {"median_ms": stats["p50"], "p90_ms": stats["p90"], "runs": runs}


def tflite_ops(path: Path) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()  # applies the XNNPACK delegate: one DELEGATE node per partition
    ops = [d["op_name"] for d in interpreter._get_ops_details()]
    return {"mirror_pad_ops": ops.count("MIRROR_PAD"), "xnnpack_partitions": ops.count("DELEGATE")}


def bench(quick: bool, runs: int) -> list[dict]:
    sizes = [128] if quick else [256, 512]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models(quick).items():
            for size in sizes:
                x = torch.rand(1, 3, size, size)
                stem = Path(tmp) / f"{name}-{size}"
                def rewritten(names):
                    return apply_rewrites(model, names, example_inputs(model, (size, size)))[0]

                artifacts = {
                    "onnxruntime": export_onnx(model, stem.with_suffix(".onnx"), (size, size)),
                    "litert rewritten": export_tflite(rewritten(format_rewrites(model, "tflite")),
                                                      stem.with_suffix(".rewritten.tflite"), (size, size)),
                }
                if any(isinstance(m, torch.nn.ReflectionPad2d) for m in model.modules()):
                    artifacts["litert slice-pad"] = export_tflite(
                        rewritten(("slice_pad",)), stem.with_suffix(".slice.tflite"), (size, size))
                    artifacts["litert mirror-pad"] = export_tflite(model, stem.with_suffix(".mirror.tflite"),
                                                                   (size, size))
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    with torch.no_grad():
                        base = latency(lambda: model(x), runs)
                    rows.append({"model": name, "size": size, "runtime": "torch eager", "threads": threads, **base,
                                 "speedup_vs_torch": 1.0})
                    for runtime, path in artifacts.items():
                        runner = load_runner(path, threads=threads)
                        arr = x.numpy()
                        row = {"model": name, "size": size, "runtime": runtime, "threads": threads,
                               **latency(lambda: runner(arr), runs)}
                        row["speedup_vs_torch"] = base["median_ms"] / row["median_ms"]
                        if path.suffix == ".tflite":
                            row.update(tflite_ops(path))
                        rows.append(row)
    return rows


def run(quick: bool, runs: int | None = None) -> dict:
    """The benchmark-runner entry point (see benchmarks/README.md)."""
    runs = max(10, runs or (10 if quick else 15))
    load_before = os.getloadavg()
    rows = bench(quick, runs)
    return {"benchmark": "bench_export", "quick": quick, "torch": torch.__version__, "cpus": os.cpu_count(),
            "load_average_before_after": [load_before, os.getloadavg()], "table": rows,
            "note": "Core ML predictions run only on macOS; not measured here. Multi-thread numbers need idle cores: "
                    "torch eager at 2 threads slows down ~20x when another process holds one of 2 cores."}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pruned TransformerNet at 128 px")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per measurement (>= 10)")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default benchmarks/results/)")
    args = parser.parse_args()
    doc = run(args.quick, args.runs)
    out = args.out or RESULTS / f"bench_export{'_quick' if args.quick else ''}.json"
    write_json(out, doc)
    print(f"{'model':26} {'size':>4} {'runtime':18} {'thr':>3} {'median ms':>10} {'p90 ms':>8} {'vs torch':>8}  "
          "xnnpack graph")
    for r in doc["table"]:
        extra = (f"{r['xnnpack_partitions']} partitions, {r['mirror_pad_ops']} MIRROR_PAD"
                 if "xnnpack_partitions" in r else "")
        print(f"{r['model']:26} {r['size']:>4} {r['runtime']:18} {r['threads']:>3} {r['median_ms']:>10.2f} "
              f"{r['p90_ms']:>8.2f} {r['speedup_vs_torch']:>7.2f}x  {extra}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
