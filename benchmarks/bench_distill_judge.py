"""What distillation through the judge buys, and where the int8 error is: the quickstart recipe run with each
distillation objective, QAT objective and mixed-precision budget, every variant graded by the judge on all three
distances (perceptual, style, and the style vector no run trains on).

Each row is one full ``styleslim run recipes/quickstart.yaml`` (ONNX Runtime and LiteRT int8, no Core ML, no web
rows, no memory probe, to keep it short), one after another in fresh processes:

- ``l1``: the recipe as it ships (output L1 to the teacher);
- ``l1+judge``: plus ``judge_weight`` 1 and ``judge_style_weight`` 1;
- ``judge``: the judge's two terms alone;
- ``qat`` / ``qat-judge``: static int8 plus QAT (200 steps) with the default objective / L1 plus the judge's terms;
- ``mixed``: static int8 under ``quantize.grade: indistinguishable`` (convs kept float while the judge says so).

With ``--edge`` the student is instead one of another architecture, which cannot copy the teacher's texture phase:
``edge_net`` (space-to-depth stem, pixel-shuffle head) around the teacher's own residual trunk, learnt with its
trunk matched (``trunk_weight``), objective by objective:

- ``edge l1``: output L1 (and MSE) alone; ``edge l1+judge``: plus the judge's two terms; ``edge l1+judge x3``:
  those at weight 3;
- ``edge l1+judge wide``: plus the 13 bundled images (``samples-wide``) and colour jitter 0.2, not 4 photos;
- ``edge l1+judge wide 3000``: that for 3000 steps, not 1000.

    python benchmarks/bench_distill_judge.py [--edge] [--out F]   # about 15 / 12 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compressor.io import write_json
from evaluation.latency import machine_info

RESULTS = Path(__file__).parent / "results"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
COMMON = ["quantize.runtimes=[onnx,tflite]", "export.formats=[onnx]", "evaluate.web=[]", "evaluate.memory=false"]
JUDGE_QAT = ("quantize.qat={steps: 200, batch_size: 2, crop: 128, lr: 0.0001, output_weight: 1.0, "
             "perceptual_weight: 0.0, judge_weight: 1.0, judge_style_weight: 1.0, checkpoint_every: 50}")
RUNS = {
    "l1": [],
    "l1+judge": ["distill.judge_weight=1", "distill.judge_style_weight=1"],
    "judge": ["distill.output_weight=0", "distill.judge_weight=1", "distill.judge_style_weight=1"],
    "qat": ["quantize.modes=[static,qat]"],
    "qat-judge": ["quantize.modes=[static,qat]", JUDGE_QAT],
    "mixed": ["quantize.modes=[static]", "quantize.grade=indistinguishable"],
}
EDGE = ["prune=null", "distill.trunk_weight=1",
        "distill.student={family: edge_net, spec: {unshuffle: 2, down: 1, stem: 32, trunk: 32, blocks: 6, "
        "block: norm, norm: instance}, init: teacher_trunk}"]
JUDGE = ["distill.judge_weight=1", "distill.judge_style_weight=1"]
WIDE = ["content=samples-wide", "distill.color_jitter=0.2"]
EDGE_RUNS = {
    "edge l1": EDGE,
    "edge l1+judge": EDGE + JUDGE,
    "edge l1+judge x3": EDGE + ["distill.judge_weight=3", "distill.judge_style_weight=3"],
    "edge l1+judge wide": EDGE + JUDGE + WIDE,
    "edge l1+judge wide 3000": EDGE + JUDGE + WIDE + ["distill.steps=3000"],
}
SHOWN = ("distilled", "quantized/onnx/model-int8.onnx", "quantized/onnx/model-int8-dynamic.onnx",
         "quantized/onnx/model-int8-qat.onnx", "quantized/tflite/model-int8.tflite",
         "quantized/tflite/model-int8-dynamic.tflite", "quantized/tflite/model-int8-qat.tflite")


def run_recipe(label: str, sets: list[str], root: Path) -> dict:
    """One recipe run in a fresh process; its report.json."""
    name = "bench_" + "".join(c if c.isalnum() else "_" for c in label)
    cmd = [sys.executable, "-m", "styleslim.cli", "run", str(RECIPE), "--set", f"name={name}"]
    for item in [*COMMON, *sets]:
        cmd += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: {done.stderr.strip()[-600:]}")
    report = json.loads((root / "runs" / name / "report.json").read_text())
    return report | {"seconds": round(time.perf_counter() - start, 1)}


def rows_of(label: str, report: dict) -> list[dict]:
    out = []
    for row in report["variants"]:
        if row["name"] not in SHOWN:
            continue
        judged = row["quality"].get("judge") or {}
        out.append({"run": label, "variant": row["name"], "runtime": row["runtime"], "grade": judged.get("grade"),
                    **{f"{d}_bands": round(judged[f"{d}_bands"], 2) for d in ("perceptual", "style", "vector")
                       if f"{d}_bands" in judged},
                    "psnr_db": round(row["quality"]["psnr_vs_teacher"], 1),
                    "p50_ms": round(row["latency_ms"][row["runtime"]]["p50"], 1)})
    return out


def run(quick: bool, edge: bool = False) -> dict:
    runs = EDGE_RUNS if edge else RUNS
    runs = dict(list(runs.items())[:2]) if quick else runs
    table, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sets in runs.items():
            report = run_recipe(label, sets, Path(tmp))
            seconds[label] = report["seconds"]
            table += rows_of(label, report)
        calibration = report["judge"]["calibration"][0]
    return {"recipe": "recipes/quickstart.yaml", "student": "edge_net around the teacher's trunk" if edge else "pruned",
            "size": 256, "calibration": calibration, "seconds": seconds,
            "machine": machine_info(), "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first two runs only")
    parser.add_argument("--edge", action="store_true", help="an edge_net student around the teacher's trunk")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.quick, args.edge)
    name = f"bench_distill_judge{'_edge' if args.edge else ''}{'_quick' if args.quick else ''}.json"
    out = args.out or RESULTS / name
    write_json(out, result)
    from benchmarks.__main__ import format_table

    print(format_table(result["table"]))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
