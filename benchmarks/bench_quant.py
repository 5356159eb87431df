"""What int8 buys: torch fp32 eager vs ORT fp32 vs ORT static int8 vs LiteRT full-integer int8, side by side.

Models: TransformerNet unpruned and 50%-pruned (compressor.prune, L1), VGG19 to relu4_1 unpruned and 50%-pruned.
Batch 1, 2 threads everywhere. Random weights (latency does not depend on them); calibration on the bundled
train images. Each int8 model's throughput is also given as a fraction of this machine's int8 conv peak
(one large QLinearConv, u8 x s8, measured here), and an ORT per-op profile shows where int8 time goes.
For TransformerNet a "conv floor" is timed too: the same network with the norms removed and zero padding
(which XNNPACK folds into the convs) instead of reflection padding, as LiteRT int8. It is not a usable
model; it shows what int8 could reach here if everything between the convs were free.

    python benchmarks/bench_quant.py --quick   # TransformerNet pair at 256 px
    python benchmarks/bench_quant.py           # all four models at 512 px
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

try:
    import triton  # noqa: F401  (before anything that might import TensorFlow)
except ImportError:
    pass

import numpy as np
import torch
from torch import nn

from compressor.io import write_json
from compressor.models import TransformerNet, TransformerNetSpec, VGG19LossNet, VGG19Spec
from compressor.quantize import calibration_set, rgb_output_convs
from evaluation.latency import measure_latency
from exports.backends.litert import quantize_tflite
from exports.backends.onnxruntime import conv_layers, quantize_onnx
from exports.rewrites import replace_modules
from exports.runtime import load_runner
from exports.stage import export_artifact

RESULTS = Path(__file__).parent / "results"
THREADS = 2
TARGETS = {  # speed-up vs torch fp32 eager of the unpruned model of the same family (last: vs its ORT int8)
    "transformer_net int8 (best runtime)": 5.0,
    "transformer_net-pruned50 int8 (best runtime)": 12.0,
    "vgg19-relu4_1-pruned50 ORT int8": 15.0,
    "transformer_net-pruned50 int8 (best runtime) vs ORT int8 unpruned": 4.0,
}


def pruned(model: nn.Module, size: int) -> nn.Module:
    from compressor.config import PruneStage
    from compressor.prune import prune_model

    return prune_model(model, PruneStage(ratio=0.5), torch.rand(1, 3, size, size)).eval()


def models(quick: bool, size: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    found = {"transformer_net": TransformerNet(TransformerNetSpec()).eval()}
    found["transformer_net-pruned50"] = pruned(TransformerNet(TransformerNetSpec()), size)
    if not quick:
        vgg = VGG19Spec(taps=["relu4_1"])
        found["vgg19-relu4_1"] = VGG19LossNet(vgg).eval()
        found["vgg19-relu4_1-pruned50"] = pruned(VGG19LossNet(vgg), size)
    return found


def convs_only(model: nn.Module) -> nn.Module:
    """``model`` with InstanceNorm removed and reflection padding replaced by zero padding."""
    bare = copy.deepcopy(model).eval()
    replace_modules(bare, lambda m: nn.Identity() if isinstance(m, nn.InstanceNorm2d) else
                    nn.ZeroPad2d(m.padding) if isinstance(m, nn.ReflectionPad2d) else None)  # XNNPACK folds the PAD
    return bare


def conv_macs(model: nn.Module, size: int) -> int:
    total = 0

    def hook(module: nn.Conv2d, _, out: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += out.numel() * module.in_channels // module.groups * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.rand(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def int8_peak_layer() -> tuple[Callable[[], object], dict]:
    """One 3x3 QLinearConv, 256 -> 256 channels at 128x128 (u8 activations, s8 weights): ORT's best int8 case.

    Returns the call to time and its description (layer, MACs)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    c, hw = 256, 128
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 127, (c, c, 3, 3), dtype=np.int8), "w"),
        numpy_helper.from_array(np.float32(0.02), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
        numpy_helper.from_array(np.full(c, 0.01, np.float32), "ws"), numpy_helper.from_array(np.zeros(c, np.int8), "wz"),
        numpy_helper.from_array(np.float32(0.5), "ys"), numpy_helper.from_array(np.uint8(128), "yz"),
    ]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, c, hw, hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.integers(0, 255, (1, c, hw, hw), dtype=np.uint8)
    return functools.partial(session.run, None, {"x": x}), {"layer": f"QLinearConv 3x3 {c}->{c} @ {hw}x{hw}",
                                                             "macs": hw * hw * c * c * 9}


def ort_profile(path: Path, x: np.ndarray, top: int = 8) -> list[dict]:
    """Share of ORT run time per op type (SessionOptions.enable_profiling)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(3):
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return [{"op": op, "share": round(us / total, 3)} for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default benchmarks/results/)")
    args = parser.parse_args()
    size = 256 if args.quick else 512
    runs = args.runs or (3 if args.quick else 9)
    torch.set_num_threads(THREADS)
    calibration, _ = calibration_set("samples", size)
    peak_call, peak = int8_peak_layer()
    rows: list[dict] = []
    x = calibration[0]
    calls: dict[str, Callable[[], object]] = {"int8 peak": peak_call}  # "model: variant" -> one inference
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, model in models(args.quick, size).items():
            work = Path(tmp) / name
            onnx_path, _ = export_artifact(model, "onnx", work / "float", size=(size, size))
            # As the quantize stage does: the RGB output conv stays float.
            rgb = rgb_output_convs(model)
            keep = [node for node, module in conv_layers(onnx_path).items() if module in rgb]
            int8_path = quantize_onnx(onnx_path, work / "int8.onnx", "static", calibration, keep_float=keep)
            tfl_path, _ = export_artifact(model, "tflite", work / "tflite", size=(size, size))
            tfl_int8 = quantize_tflite(tfl_path, work / "int8.tflite", "static", calibration, keep_float=rgb)
            runners = {"ORT fp32": load_runner(onnx_path, THREADS), "ORT int8": load_runner(int8_path, THREADS),
                       "TFLite int8": load_runner(tfl_int8, THREADS)}
            if name.startswith("transformer_net"):
                bare, _ = export_artifact(convs_only(model), "tflite", work / "bare", size=(size, size))
                bare_int8 = quantize_tflite(bare, work / "bare-int8.tflite", "static", calibration, keep_float=rgb)
                runners["TFLite int8 conv floor"] = load_runner(bare_int8, THREADS)
            calls[f"{name}: torch fp32"] = functools.partial(model, torch.from_numpy(x))
            calls.update({f"{name}: {label}": functools.partial(runner, x) for label, runner in runners.items()})
            row = {"model": name, "size": size, "conv_gmacs": round(conv_macs(model, size) / 1e9, 3)}
            if name in ("transformer_net", "vgg19-relu4_1"):
                row["ort_int8_profile"] = ort_profile(int8_path, x)
            rows.append(row)
        # Every variant of every model in one loop, 3 back-to-back runs per visit, so drift hits them all alike.
        stats = measure_latency(calls, runs=runs, warmup=2, block=3)
    peak["ms"] = stats["int8 peak"]["p50"]
    peak["macs_per_s"] = peak["macs"] / peak["ms"] * 1e3
    for row in rows:
        row["ms"] = {key.partition(": ")[2]: round(stats[key]["p50"], 1) for key in calls
                     if key.partition(": ")[0] == row["model"]}
        row["int8_fraction_of_peak"] = {label: round(row["conv_gmacs"] * 1e9 / row["ms"][label] * 1e3 / peak["macs_per_s"], 3)
                                        for label in ("ORT int8", "TFLite int8")}
    for row in rows:
        family = row["model"].removesuffix("-pruned50")
        base = next(r for r in rows if r["model"] == family)
        row["speedup_vs_torch_fp32_unpruned"] = {k: round(base["ms"]["torch fp32"] / v, 2) for k, v in row["ms"].items()}
        row["speedup_vs_ort_int8_unpruned"] = {k: round(base["ms"]["ORT int8"] / v, 2) for k, v in row["ms"].items()}
    targets = {}
    for row in rows:
        best = max(row["speedup_vs_torch_fp32_unpruned"][k] for k in ("ORT int8", "TFLite int8"))
        targets[f"{row['model']} int8 (best runtime)"] = best
        targets[f"{row['model']} ORT int8"] = row["speedup_vs_torch_fp32_unpruned"]["ORT int8"]
        targets[f"{row['model']} int8 (best runtime) vs ORT int8 unpruned"] = max(
            row["speedup_vs_ort_int8_unpruned"][k] for k in ("ORT int8", "TFLite int8"))
    verdicts = {k: {"target": t, "measured": targets.get(k), "met": targets.get(k) is not None and targets[k] >= t}
                for k, t in TARGETS.items()}
    report = {"threads": THREADS, "batch": 1, "size": size, "runs": runs, "int8_peak": peak, "table": rows,
              "targets": verdicts, "note": "random weights; latencies are medians; int8 = u8 activations, s8 weights"}
    print(f"\nint8 peak: {peak['layer']}: {peak['macs_per_s'] / 1e9:.1f} GMAC/s")
    for r in rows:
        ms = ", ".join(f"{k} {v:.1f} ms" for k, v in r["ms"].items())
        best = max(r["speedup_vs_torch_fp32_unpruned"]["ORT int8"], r["speedup_vs_torch_fp32_unpruned"]["TFLite int8"])
        print(f"{r['model']} ({r['conv_gmacs']} GMAC): {ms}; best int8 {best:.2f}x torch fp32 (unpruned), "
              f"{max(r['speedup_vs_ort_int8_unpruned']['ORT int8'], r['speedup_vs_ort_int8_unpruned']['TFLite int8']):.2f}x "
              "ORT int8 (unpruned)")
    for k, v in verdicts.items():
        print(f"target {k}: >= {v['target']}x, measured {v['measured']}: {'met' if v['met'] else 'NOT met'}")
    out = args.out or RESULTS / f"bench_quant{'_quick' if args.quick else ''}.json"
    write_json(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
