"""Model folders (``spec.json`` + ``weights.safetensors``) and foreign checkpoints.

Nothing here unpickles code: our own weights are safetensors, foreign
``.pth`` files go through ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.models.adain import AdaINNet
from compressor.models.arbitrary import ArbitraryStyleNet
from compressor.models.multistyle import MultiStyleNet
from compressor.models.spec import AdaINSpec, ArbitrarySpec, ModelSpec, MultiStyleSpec, TransformerNetSpec, VGG19Spec
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
    if isinstance(spec, MultiStyleSpec):
        return MultiStyleNet(spec)
    if isinstance(spec, ArbitrarySpec):
        return ArbitraryStyleNet(spec)
    raise TypeError(f"not a model spec: {spec!r}")


def parse_spec(data: dict[str, Any] | str) -> ModelSpec:
    if isinstance(data, str):
        return _SPEC_ADAPTER.validate_json(data)
    return _SPEC_ADAPTER.validate_python(data)


def current_spec(model: nn.Module) -> ModelSpec:
    """Spec of ``model`` as it is now, widths read off the layers (so pruned models describe themselves)."""
    return model.current_spec()


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename to ``path``: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        return parse_spec(doc["spec"]), doc.get("meta", {})
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a valid styleslim spec: {exc}") from exc


def load_model(directory: str | Path) -> nn.Module:
    """Rebuild a model from its folder; the result carries ``.meta`` from spec.json."""
    directory = Path(directory)
    spec, meta = read_spec(directory)
    model = build_model(spec)
    load_weights(model, load_file(str(directory / WEIGHTS_FILE)), str(directory / WEIGHTS_FILE))
    model.meta = meta
    return model.eval()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a ``.pth``/``.pt`` file (loaded with weights_only=True)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable weights-only checkpoint ({exc})") from exc
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
    model.load_state_dict(state)


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
