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

    python benchmarks/bench_distill_judge.py [--out F]      # about 15 min on 2 cores
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


def run(quick: bool) -> dict:
    runs = {"l1": RUNS["l1"], "l1+judge": RUNS["l1+judge"]} if quick else RUNS
    table, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sets in runs.items():
            report = run_recipe(label, sets, Path(tmp))
            seconds[label] = report["seconds"]
            table += rows_of(label, report)
        calibration = report["judge"]["calibration"][0]
    return {"recipe": "recipes/quickstart.yaml", "size": 256, "calibration": calibration, "seconds": seconds,
            "machine": machine_info(), "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.quick)
    out = args.out or RESULTS / f"bench_distill_judge{'_quick' if args.quick else ''}.json"
    write_json(out, result)
    from benchmarks.__main__ import format_table

    print(format_table(result["table"]))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
