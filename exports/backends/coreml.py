"""The Core ML backend: mlprogram export, coremltools weight compression, structure checks, the runner.

Export: an mlprogram .mlpackage with a fixed input shape, converted from a traced module.
Compression through coremltools.optimize.coreml: int8 linear (per-channel)
and k-means palettization. Both shrink the weights; compute stays
float16/float32 on the device (the Neural Engine decompresses them). On
Linux coremltools cannot run predictions, so artifacts are verified
structurally: the spec's I/O and weight dtypes must show what was asked.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.io import atomic_output, path_size
from exports.backends.base import Backend, QuantizeJob, Runner, register_backend
from exports.common import ExportError, ExportWrapper, conversion_error, converter_output, example_inputs

PREDICTIONS_ON_LINUX = "not run on Linux (coremltools runs them only on macOS)"


def _coremltools():
    try:
        import triton  # noqa: F401  (before coremltools: it may import TensorFlow, and TF then triton segfaults)
    except ImportError:
        pass
    import coremltools

    return coremltools


def export_coreml(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] = (256, 256),
    precision: str = "fp16",
    layout: str = "nchw",
    dynamic: bool = False,
) -> Path:
    """Write ``model`` as an mlprogram .mlpackage (fp16 compute by default, float32 I/O)."""
    ct = _coremltools()
    if dynamic:
        raise ExportError("dynamic input size is an ONNX option; coreml artifacts have a fixed shape")
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"Core ML precision {precision!r}: choose fp16 or fp32 (palettization comes from quantize)")
    path = Path(path)
    wrapper = ExportWrapper(model, layout)
    inputs = example_inputs(model, size, layout)
    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    try:
        with torch.no_grad(), warnings.catch_warnings(), converter_output():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace deprecation
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed on purpose
            traced = torch.jit.trace(wrapper, inputs)
            mlmodel = ct.convert(
                traced,
                inputs=[ct.TensorType(name=n, shape=x.shape, dtype=np.float32)
                        for n, x in zip(wrapper.input_names, inputs)],
                outputs=[ct.TensorType(name=n, dtype=np.float32) for n in wrapper.output_names],
                convert_to="mlprogram",
                compute_precision=compute,
                minimum_deployment_target=ct.target.iOS15,
            )
    except Exception as exc:
        raise conversion_error("Core ML", wrapper, inputs, exc) from exc
    with atomic_output(path) as tmp:
        mlmodel.save(str(tmp))
    return path


def _operations(spec) -> Iterator:
    """Every operation of every function and block of an mlprogram spec."""
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            yield from block.operations


def inspect_coreml(path: str | Path) -> dict:
    """Inputs, outputs (name, shape, dtype), op types and weight dtypes of a saved .mlpackage."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(path))
    if not spec.HasField("mlProgram"):
        raise ExportError(f"{path}: not an mlprogram")

    def arrays(features) -> list[dict]:
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
        return [{"name": f.name, "shape": list(f.type.multiArrayType.shape),
                 "dtype": dtype(f.type.multiArrayType.dataType)} for f in features]

    tensor_dtype = ct.proto.MIL_pb2.DataType.Name
    ops: set[str] = set()
    weight_dtypes: set[str] = set()
    for op in _operations(spec):
        ops.add(op.type)
        if op.type == "const":
            out = op.outputs[0].type
            if out.HasField("tensorType") and out.tensorType.rank > 1:
                weight_dtypes.add(tensor_dtype(out.tensorType.dataType))
    return {
        "inputs": arrays(spec.description.input),
        "outputs": arrays(spec.description.output),
        "op_types": sorted(ops),
        "weight_dtypes": sorted(weight_dtypes),
        "spec_version": spec.specificationVersion,
    }


def can_predict() -> bool:
    """coremltools runs predictions only on macOS."""
    return sys.platform == "darwin"


# Weight dtypes the spec must show for each compression.
EXPECTED_WEIGHT_DTYPE = {"int8": "INT8 data", 4: "16-entry LUT", 6: "64-entry LUT"}


def compress_coreml(mlpackage: str | Path, out_path: str | Path, scheme: str | int) -> dict:
    """``scheme`` = "int8" (linear symmetric per-channel) or 4 / 6 (bits of k-means palettization, needs scikit-learn).

    Returns the spec inspection of the written package (op types, weight dtypes) and both sizes.
    """
    ct = _coremltools()
    from coremltools.optimize import coreml as cto

    mlmodel = ct.models.MLModel(str(mlpackage), skip_model_load=True)
    if scheme == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        with converter_output():
            compressed = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    elif scheme in (4, 6):
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=scheme, granularity="per_tensor")
        with converter_output():
            compressed = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    else:
        raise ExportError(f"Core ML compression {scheme!r}: choose 'int8', 4 or 6")
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        compressed.save(str(tmp))
    structure = {**inspect_coreml(out_path), "compressed_weights": compressed_weights(out_path)}
    want = EXPECTED_WEIGHT_DTYPE[scheme]
    if want not in structure["compressed_weights"]:
        raise ExportError(f"{out_path}: expected {want} compressed weights, spec shows {structure['compressed_weights']}")
    return {**structure, "size_bytes": path_size(out_path), "float_size_bytes": path_size(Path(mlpackage))}


def compressed_weights(path: str | Path) -> dict[str, int]:
    """Kind -> count of the compressed weight tensors (``constexpr_*`` ops): "INT8 data", "64-entry LUT", ..."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(path))
    name = ct.proto.MIL_pb2.DataType.Name
    found: dict[str, int] = {}
    for op in _operations(spec):
        if op.type.startswith("constexpr"):
            data, lut = op.attributes.get("quantized_data"), op.attributes.get("lut")
            if data is not None:
                kind = f"{name(data.type.tensorType.dataType)} data"
            elif lut is not None:
                kind = f"{lut.type.tensorType.dimensions[-1].constant.size}-entry LUT"
            else:
                kind = op.type
            found[kind] = found.get(kind, 0) + 1
    return found


def _check_spec(structure: dict, manifest: dict, precision: str, path: Path) -> None:
    """The saved spec has the manifest's I/O names and shapes, and weights in the requested precision."""
    want_in = [(i["name"], i["shape"]) for i in manifest["inputs"]]
    got_in = [(i["name"], i["shape"]) for i in structure["inputs"]]
    want_out = [o["name"] for o in manifest["outputs"]]
    got_out = [o["name"] for o in structure["outputs"]]
    weight = {"fp16": "FLOAT16", "fp32": "FLOAT32"}[precision]
    problems = []
    if got_in != want_in:
        problems.append(f"inputs {got_in} != {want_in}")
    if got_out != want_out:
        problems.append(f"outputs {got_out} != {want_out}")
    if structure["weight_dtypes"] != [weight]:
        problems.append(f"weight dtypes {structure['weight_dtypes']} != [{weight}]")
    if problems:
        raise ExportError(f"{path}: Core ML spec check failed: " + "; ".join(problems))


def check_structure(path: Path, manifest: dict[str, Any], precision: str) -> dict[str, Any]:
    """The saved spec (inspected) after checking it has the manifest's I/O and the precision's weights."""
    structure = inspect_coreml(path)
    _check_spec(structure, manifest, precision, path)
    return structure


# ---------------------------------------------------------------- runner (macOS only)


def load(path: Path, threads: int | None, layout: str, manifest: dict[str, Any]) -> Runner:
    if not can_predict():
        raise ExportError(f"{path}: Core ML predictions {PREDICTIONS_ON_LINUX}")
    ct = _coremltools()
    mlmodel = ct.models.MLModel(str(path))
    spec = mlmodel.get_spec()
    inputs = [f.name for f in spec.description.input]
    outputs = [f.name for f in spec.description.output]

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        result = mlmodel.predict(dict(zip(inputs, xs)))
        return [np.asarray(result[o], dtype=np.float32) for o in outputs]

    return Runner(run, "coreml", inputs, outputs, layout, list(spec.description.input[0].type.multiArrayType.shape))


# ---------------------------------------------------------------- the quantize stage for this runtime

RUNS_IN_INT8 = "nothing on Linux; on device weights decompress to fp16 compute"


def quantize(job: QuantizeJob) -> list[dict[str, Any]]:
    """int8 weights and each of ``coreml_palettize_bits`` k-means palettizations of the fp16 float package."""
    float_path, _ = job.export_float("coreml", precision="fp16")
    manifests = []
    for scheme in ["int8", *job.settings.coreml_palettize_bits]:
        label = "int8-weight-only" if scheme == "int8" else f"palettized-{scheme}bit"
        path = job.out_dir / f"model-{label}.mlpackage"
        structure = compress_coreml(float_path, path, scheme)
        info = {**job.extra, "scheme": "linear symmetric per-channel int8" if scheme == "int8" else
                f"k-means palettization, {scheme}-bit per-tensor LUT", "runs_in_int8": RUNS_IN_INT8}
        verdict = {"runtime": "coreml (structure only)", "passed": None, "threshold_db": None,
                   "predictions": PREDICTIONS_ON_LINUX, "structure": structure}
        manifests.append(job.write(path, label, info, verdict=verdict))
    return manifests


register_backend(Backend(
    runtime="coreml", format="coreml", suffix=".mlpackage", packages=("torch", "coremltools"),
    default_precision="fp16", export=export_coreml, runner=load, quantize=quantize, can_run=can_predict,
    cannot_run_note=PREDICTIONS_ON_LINUX, check_structure=check_structure,
    quantize_modes=("static", "weight-only"), mode_independent=True,
))
