"""LiteRT int8 through ai-edge-quantizer (what styleslim uses) vs litert-torch's PT2E path, on a trained model.

Both start from the same rewritten TransformerNet (slice padding, explicit InstanceNorm, sub-pixel output conv)
and the same calibration images; quality is PSNR against the torch fp32 model on the held-out eval images
(random weights would make that meaningless, hence a trained model: ``make quickstart`` writes one).

    python benchmarks/bench_tflite_int8.py [--model runs/quickstart/teacher] [--quick]
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

from compressor.data import sample_content_paths
from compressor.io import write_json
from compressor.models import load_model
from compressor.quantize import calibration_set, image_batch
from evaluation.latency import measure_latency
from evaluation.metrics import fidelity
from exports.backends.litert import quantize_tflite
from exports.common import ExportWrapper, example_inputs
from exports.rewrites import FORMAT_REWRITES, apply_rewrites
from exports.runtime import load_runner
from exports.stage import export_artifact

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODEL = Path("runs/quickstart/teacher")
THREADS = 2


def pt2e_tflite(model: torch.nn.Module, calibration: list[np.ndarray], size: int, path: Path) -> Path:
    """litert-torch's static int8: its PT2E quantizer (symmetric, per-channel weights) through convert_pt2e."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    rewritten, _ = apply_rewrites(model, FORMAT_REWRITES["tflite"], example_inputs(model, (size, size)))
    wrapper = ExportWrapper(rewritten, "nchw").eval()
    example = (torch.from_numpy(calibration[0]),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(wrapper, example).module(), quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(torch.from_numpy(x))
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return path


def run(quick: bool, model_dir: Path = DEFAULT_MODEL, runs: int | None = None) -> dict:
    if not (model_dir / "spec.json").is_file():
        return {"table": [], "skipped": f"no trained model at {model_dir}; run `make quickstart` or pass --model"}
    size, runs = (256 if quick else 512), runs or (3 if quick else 7)
    torch.set_num_threads(THREADS)
    model = load_model(model_dir).eval()
    calibration, _ = calibration_set("samples", size)
    images = image_batch(sample_content_paths("eval"), size)
    with torch.no_grad():
        reference = [model(x).clamp(0, 1) for x in images]
        torch_ms = measure_latency({"torch": lambda: model(images[0])}, runs=runs)["torch"]["p50"]
    rows = [{"path": "torch fp32", "ms": round(torch_ms, 1), "psnr_db": None}]
    with tempfile.TemporaryDirectory() as tmp:
        float_path, _ = export_artifact(model, "tflite", Path(tmp) / "float", size=(size, size))
        artifacts = {"ai-edge-quantizer static_wi8_ai8": quantize_tflite(float_path, Path(tmp) / "aeq.tflite", "static",
                                                                           calibration),
                     "litert-torch PT2E symmetric": pt2e_tflite(model, calibration, size, Path(tmp) / "pt2e.tflite")}
        for label, path in artifacts.items():
            runner = load_runner(path, THREADS)
            outputs = [torch.from_numpy(runner(x.numpy())).clamp(0, 1) for x in images]
            quality = float(np.mean([fidelity(o, r)["psnr_vs_teacher"] for o, r in zip(outputs, reference)]))
            ms = measure_latency({"r": functools.partial(runner, images[0].numpy())}, runs=runs)["r"]["p50"]
            rows.append({"path": label, "ms": round(ms, 1), "psnr_db": round(quality, 1),
                         "speedup_vs_torch_fp32": round(torch_ms / ms, 2)})
    return {"model": str(model_dir), "size": size, "threads": THREADS, "table": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="trained TransformerNet folder")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = run(args.quick, args.model)
    for row in report["table"]:
        print(row)
    out = args.out or RESULTS / f"bench_tflite_int8{'_quick' if args.quick else ''}.json"
    write_json(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
