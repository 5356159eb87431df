"""Core ML weight compression through coremltools.optimize.coreml: int8 linear (per-channel) and k-means palettization.

Both shrink the weights; compute stays float16/float32 on the device (the
Neural Engine decompresses them). On Linux coremltools cannot run predictions,
so the result is verified structurally: the spec's weight dtypes must show the
compression.
"""

from __future__ import annotations

from pathlib import Path

from compressor.io import atomic_output
from exports.common import ExportError
from exports.coreml_export import _coremltools, inspect_coreml

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
        compressed = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    elif scheme in (4, 6):
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=scheme, granularity="per_tensor")
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
    return {**structure, "size_bytes": package_size(out_path), "float_size_bytes": package_size(Path(mlpackage))}


def compressed_weights(path: str | Path) -> dict[str, int]:
    """Kind -> count of the compressed weight tensors (``constexpr_*`` ops): "INT8 data", "64-entry LUT", ..."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(path))
    name = ct.proto.MIL_pb2.DataType.Name
    found: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
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


def package_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
