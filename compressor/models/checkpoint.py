"""Model folders (``spec.json`` + ``weights.safetensors``) and foreign checkpoints.

Nothing here unpickles code: our own weights are safetensors, foreign
``.pth`` files go through ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.errors import UserError, one_line, pydantic_line, strip_unsafe_advice
from compressor.models.adain import AdaINNet
from compressor.models.spec import AdaINSpec, ModelSpec, TransformerNetSpec, VGG19Spec
from compressor.models.transformer_net import TransformerNet
from compressor.models.vgg import VGG19LossNet

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"
_SPEC_ADAPTER: TypeAdapter = TypeAdapter(ModelSpec)


class CheckpointMismatch(ValueError):
    """A checkpoint whose tensors do not fit the architecture; the message names the layers."""


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model for ``spec``."""
    if isinstance(spec, TransformerNetSpec):
        return TransformerNet(spec)
    if isinstance(spec, VGG19Spec):
        return VGG19LossNet(spec)
    if isinstance(spec, AdaINSpec):
        return AdaINNet(spec)
    raise TypeError(f"not a model spec: {spec!r}")


def parse_spec(data: dict[str, Any] | str) -> ModelSpec:
    if isinstance(data, str):
        return _SPEC_ADAPTER.validate_json(data)
    return _SPEC_ADAPTER.validate_python(data)


def current_spec(model: nn.Module) -> ModelSpec:
    """Spec of ``model`` as it is now, widths read off the layers (so pruned models describe themselves)."""
    return model.current_spec()


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync, then rename to ``path``: readers never see a half-written file.

    On failure (a full disk included) the temp file is removed and the error names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 (and some writers replace the file); artifacts are shared
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno is None or exc.filename == str(path):
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(model: nn.Module, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``spec.json`` and ``weights.safetensors`` for ``model`` into ``directory``."""
    directory = Path(directory)
    spec = current_spec(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    doc = {"spec": spec.model_dump(mode="json"), "meta": meta or {}}
    doc["meta"]["weights_sha256"] = file_sha256(directory / WEIGHTS_FILE)
    atomic_write(directory / SPEC_FILE, lambda p: p.write_text(json.dumps(doc, indent=2) + "\n"))
    return directory


def read_spec(directory: str | Path) -> tuple[ModelSpec, dict[str, Any]]:
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model spec here (a model folder holds {SPEC_FILE} + {WEIGHTS_FILE})")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(path, f"not valid JSON ({exc})", "re-create the model folder") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        raise UserError(path, 'must be a JSON object {"spec": {...}, "meta": {...}}', "re-create the model folder")
    try:
        spec = parse_spec(doc["spec"])
    except ValidationError as exc:
        raise UserError(path, f"invalid spec: {pydantic_line(exc, where='spec')}", "fix or re-create it") from None
    meta = doc.get("meta")
    return spec, meta if isinstance(meta, dict) else {}


def load_model(directory: str | Path) -> nn.Module:
    """Rebuild a model from its folder; the result carries ``.meta`` from spec.json."""
    directory = Path(directory)
    spec, meta = read_spec(directory)
    model = build_model(spec)
    load_weights(model, read_safetensors(directory / WEIGHTS_FILE), str(directory / WEIGHTS_FILE))
    model.meta = meta
    return model.eval()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights_only(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``; a file holding code or garbage is one UserError naming it.

    Torch's own message advises re-running with ``weights_only=False``; that advice is dropped.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(path, "no such file", "check the path") from None
    except Exception as exc:
        found = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|"
                          r"Trying to load unsupported GLOBAL [\w.]+)", str(exc))
        what = (f"not a weights-only checkpoint: it holds Python objects, never unpickled ({found.group(1)})"
                if found else f"not a weights-only torch checkpoint ({type(exc).__name__}: "
                f"{strip_unsafe_advice(one_line(str(exc)))[:120]})")
        raise UserError(path, what, "use a plain state dict of tensors, or .safetensors") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``safetensors.load_file``; a truncated, empty or corrupt file is one UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "no such file", "a model folder holds spec.json + weights.safetensors")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors_rust.SafetensorError, OSError from a short read, ...
        raise UserError(path, f"not a readable safetensors file ({one_line(str(exc))[:160]})",
                        "re-create it; it may be truncated") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a ``.pth``/``.pt`` file (loaded with weights_only=True)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = load_weights_only(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return state


def check_shapes(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointMismatch naming every missing, unexpected or wrongly shaped tensor."""
    problems = [f"  missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in got]
    problems += [f"  unexpected {k} {tuple(v.shape)}" for k, v in got.items() if k not in expected]
    problems += [
        f"  {k}: checkpoint {tuple(got[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in got and got[k].shape != v.shape
    ]
    if problems:
        raise CheckpointMismatch(f"{source} does not fit the model:\n" + "\n".join(problems))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    check_shapes(model.state_dict(), state, source)
    check_finite(state, source)
    model.load_state_dict(state)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """NaN or Inf in weights would give black or garbage images with exit 0: refuse, naming the layer."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(source, f"layer {key.rsplit('.', 1)[0]} ({key}) holds {bad} NaN/Inf value(s)",
                            "the weights are corrupt; retrain or re-create them")


def load_fast_neural_style(path: str | Path, style: str | None = None) -> TransformerNet:
    """A pytorch/examples fast_neural_style checkpoint as a TransformerNet.

    Legacy ``in*.running_mean/var`` keys (old InstanceNorm) are dropped; the
    0-255 I/O of those models is what TransformerNet computes in internally.
    The widths are read off the tensors, so narrower variants load too.
    """
    path = Path(path)
    state = {k: v for k, v in read_state_dict(path).items() if not k.endswith(("running_mean", "running_var"))}
    try:
        spec = TransformerNetSpec(
            style=style or path.stem,
            conv1=state["conv1.conv2d.weight"].shape[0],
            conv2=state["conv2.conv2d.weight"].shape[0],
            trunk=state["conv3.conv2d.weight"].shape[0],
            res_inner=[state[f"res{i}.conv1.conv2d.weight"].shape[0] for i in range(1, 6)],
            deconv1=state["deconv1.conv2d.weight"].shape[0],
            deconv2=state["deconv2.conv2d.weight"].shape[0],
        )
    except KeyError as exc:
        raise CheckpointMismatch(f"{path}: not a fast_neural_style TransformerNet checkpoint (no {exc})") from exc
    model = TransformerNet(spec)
    load_weights(model, state, str(path))
    return model.eval()


def load_adain(vgg_path: str | Path, decoder_path: str | Path) -> AdaINNet:
    """naoto0804/pytorch-AdaIN ``vgg_normalised.pth`` + ``decoder.pth`` as an AdaINNet."""
    vgg = read_state_dict(Path(vgg_path))
    decoder = read_state_dict(Path(decoder_path))
    model = AdaINNet(AdaINSpec(style=None))
    enc_keys = set(model.encoder.state_dict())
    load_weights(model.encoder, {k: v for k, v in vgg.items() if k in enc_keys}, str(vgg_path))
    load_weights(model.decoder, decoder, str(decoder_path))
    return model.eval()


def init_adain_encoder_from_vgg(model: AdaINNet, vgg: VGG19LossNet) -> None:
    """Copy a loaded VGG19 loss network's convs into the AdaIN encoder (its input conv then normalises)."""
    src = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    dst = [m for m in model.encoder if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    if len(src) < len(dst):
        raise ValueError(f"VGG19 has {len(src)} convs, the AdaIN encoder needs {len(dst)} (taps up to relu4_1)")
    with torch.no_grad():
        for s_conv, d_conv in zip(src, dst):
            d_conv.weight.copy_(s_conv.weight)
            d_conv.bias.copy_(s_conv.bias)
    model.set_imagenet_input_conv()
