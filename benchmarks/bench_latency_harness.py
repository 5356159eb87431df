"""Is the evaluation's round-robin latency fair? The quickstart's runtimes, timed alone and side by side.

After a run, ONNX Runtime's, OpenMP's and XNNPACK's worker threads spin-wait for more work; on 2 cores they steal
the cores of whatever runs next, so a variant timed right after another runtime reads slower than it runs.
Each variant of a quickstart run (``make quickstart`` first) is timed alone in a fresh process, then all together
in one process the two ways ``evaluation.latency.measure_latency`` can interleave them: one timed run per visit,
and blocks of 5 (its default). The table gives p50 ms per way and its ratio to alone.

    python benchmarks/bench_latency_harness.py [--run runs/quickstart] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    import triton  # noqa: F401  (before anything that might import TensorFlow)
except ImportError:
    pass

import numpy as np
import torch

from compressor.io import write_json
from compressor.models import load_model
from evaluation.latency import machine_info, measure_latency
from exports.runtime import load_runner

RESULTS = Path(__file__).parent / "results"
THREADS = 2
SIZE = 256
VARIANTS = {  # name -> path inside the run folder
    "torch pruned": "pruned",
    "ORT teacher fp32": "exports/teacher/model-fp32.onnx",
    "ORT student fp32": "exports/model-fp32.onnx",
    "ORT student int8": "quantized/onnx/model-int8.onnx",
    "LiteRT teacher fp32": "exports/teacher/model-fp32.tflite",
    "LiteRT student int8": "quantized/tflite/model-int8.tflite",
}
WAYS = {"one run per visit": 1, "blocks of 5": 5}


def call_for(path: Path):
    """A zero-argument call running the model or artifact at ``path`` on one fixed 256² input."""
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    if path.is_dir():
        model, tensor = load_model(path).eval(), torch.from_numpy(x)

        def run() -> None:
            with torch.no_grad():
                model(tensor)
        return run
    runner = load_runner(path, THREADS)
    return lambda: runner(x)


def alone(path: Path, runs: int) -> float:
    """p50 ms of ``path`` timed in a fresh process with nothing else loaded."""
    code = (f"import sys, json, torch; torch.set_num_threads({THREADS}); sys.path.insert(0, {str(Path.cwd())!r}); "
            "from benchmarks.bench_latency_harness import call_for; from evaluation.latency import measure_latency; "
            f"from pathlib import Path; print(json.dumps(measure_latency({{0: call_for(Path({str(path)!r}))}}, "
            f"runs={runs})[0]['p50']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def run(quick: bool, run_dir: Path = Path("runs/quickstart")) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    runs = 5 if quick else 20
    paths = {name: run_dir / rel for name, rel in VARIANTS.items() if (run_dir / rel).exists()}
    if not paths:
        raise SystemExit(f"{run_dir}: no quickstart variants here (run `make quickstart` first)")
    rows = {name: {"variant": name, "alone_ms": round(alone(path, runs), 2)} for name, path in paths.items()}
    calls = {name: call_for(path) for name, path in paths.items()}
    for way, block in WAYS.items():
        for name, stat in measure_latency(calls, runs=runs, warmup=2, block=block).items():
            rows[name][f"{way} ms"] = round(stat["p50"], 2)
            rows[name][f"{way} / alone"] = round(stat["p50"] / rows[name]["alone_ms"], 2)
    return {"table": list(rows.values()), "threads": THREADS, "size": SIZE, "runs": runs, "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_latency_harness.json")
    args = parser.parse_args()
    result = run(args.quick, args.run)
    write_json(args.out, result)
    print(json.dumps(result["table"], indent=1))


if __name__ == "__main__":
    main()
