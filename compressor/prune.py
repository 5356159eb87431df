"""L1 structured channel pruning through torch-pruning's DependencyGraph.

Channels are physically removed by torch-pruning, which keeps coupled layers
consistent (TransformerNet's residual trunk, InstanceNorm affine parameters,
the upsampling path, the STN). The result describes itself through
``current_spec()``, so a pruned model saves and reloads like any other model
folder, without torch-pruning.

Importance is the L1 magnitude of every layer in a coupled group, each
layer's scores divided by their mean before averaging (see ``L1Importance``).
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function as tpf

from compressor.config import PruneStage
from compressor.data import ContentCrops, resolve_images
from compressor.models import get_family, load_model, save_model

log = logging.getLogger(__name__)

Finetune = Callable[[nn.Module, int], None]
"""Called as ``finetune(model, step)`` after each iterative pruning step but the last."""

_PRUNABLE = (nn.Conv2d, nn.Linear)


class L1Importance(tp.importance.GroupMagnitudeImportance):
    """L1 magnitude of a coupled group in which every layer counts equally, InstanceNorm included.

    Customized layers (the conditional norms) are scored by their pruner's
    ``channel_importance``, once per layer.

    torch-pruning's ``GroupMagnitudeImportance`` scores BatchNorm/LayerNorm but
    skips InstanceNorm, yet after an InstanceNorm a conv filter's magnitude is
    normalised away and ``|gamma|`` is what sets the channel's scale. Each
    layer's scores are divided by their mean before the group mean, so a 9x9
    conv's large filter sums do not drown the norm's single scalars.
    """

    def __init__(self) -> None:
        super().__init__(p=1, group_reduction="mean", normalizer="mean")

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        scores, root_idxs, customized = [], [], set()
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            scorer = getattr(getattr(fn, "__self__", None), "channel_importance", None)
            if scorer is not None:
                if layer in customized:
                    continue
                customized.add(layer)
                local = scorer(layer, idxs)
            elif fn in (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels):
                local = layer.weight.data[idxs].flatten(1).abs().sum(1)
            elif fn in (tpf.prune_conv_in_channels, tpf.prune_linear_in_channels):
                local = layer.weight.data.transpose(0, 1)[idxs].flatten(1).abs().sum(1)
            elif fn == tpf.prune_instancenorm_out_channels and layer.affine:
                local = layer.weight.data[idxs].abs()
            else:
                continue
            scores.append(local / local.mean().clamp_min(1e-12))
            root_idxs.append(group[i].root_idxs)
        if not scores:
            return None
        return self._normalize(self._reduce(scores, root_idxs), self.normalizer)


def example_inputs_for(
    model: nn.Module, size: int = 32, device: torch.device | str = "cpu"
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Dummy inputs for graph tracing (the family's ``example_inputs``: AdaIN takes content and style)."""
    return get_family(model).example_inputs(model, size, device)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/Linear layers by module path, plus the family's aliases (VGG convs also answer to ``conv3_1``)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    layers.update(get_family(model).layer_aliases(model))
    return layers


def _is_type(layers: dict[str, nn.Module], pattern: str) -> bool:
    return pattern in {type(m).__name__ for m in layers.values()}


def _matching(layers: dict[str, nn.Module], pattern: str, option: str) -> list[nn.Module]:
    """The layers a name glob (``res*.conv1.conv2d``) or a module type (``Conv2d``) names."""
    hits = [m for name, m in layers.items() if fnmatch.fnmatchcase(name, pattern) or type(m).__name__ == pattern]
    if not hits:
        raise ValueError(f"{option} {pattern!r} matches no prunable layer; layers are: {', '.join(layers)}")
    return list(dict.fromkeys(hits))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def prune_model(
    model: nn.Module,
    config: PruneStage,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    finetune: Finetune | None = None,
) -> nn.Module:
    """Prune ``model`` in place by L1 importance; returns it with ``model.spec`` set to its narrower spec.

    ``config.overrides`` maps layer-name globs or module types (``Conv2d``) to their own ratio: a name beats a
    type, which beats the global ``ratio`` (coremltools.optimize's precedence); ``config.ignore`` lists globs or
    types never pruned. With ``iterative_steps`` > 1 the
    ratio is reached in equal steps, ``finetune(model, step)`` running between them. The model's
    family says which layers keep their width and may adjust the result (``before_prune`` / ``after_prune``).
    """
    family = get_family(model)
    state = family.before_prune(model, config, finetune is not None)
    layers = prunable_layers(model)
    ignored = family.protected_layers(model, config)
    for pattern in config.ignore:
        ignored += _matching(layers, pattern, "ignore")
    by_type_then_name = sorted(config.overrides.items(), key=lambda item: not _is_type(layers, item[0]))
    ratios = {m: ratio for pattern, ratio in by_type_then_name for m in _matching(layers, pattern, "override")}
    was_training = model.training
    # torch-pruning traces the autograd graph: frozen networks (the loss VGG) need grads while it traces.
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    model.eval().requires_grad_(True)
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs if example_inputs is not None else example_inputs_for(model, device=_device(model)),
            importance=L1Importance(),
            global_pruning=config.scope == "global",
            pruning_ratio=config.ratio,
            pruning_ratio_dict=ratios,
            iterative_steps=config.iterative_steps,
            ignored_layers=ignored,
            round_to=config.round_to,
            customized_pruners=family.customized_pruners(model) or None,
        )
    names = {m: n for n, m in model.named_modules()}
    kept = {n: list(range(m.weight.shape[0])) for n, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    for step in range(config.iterative_steps):
        for group in pruner.step(interactive=True):
            _drop_from_kept(group, names, kept)
            group.prune()
        if finetune is not None and step + 1 < config.iterative_steps:
            finetune(model, step)
            model.eval()
    family.after_prune(model, config, state, kept)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    model.spec = model.current_spec()
    model.kept_out_channels = kept  # original indices, for reconstruct() against the unpruned teacher
    return model.train(was_training)


@torch.no_grad()
def reconstruct(student: nn.Module, teacher: nn.Module, kept: dict[str, list[int]], images: list[torch.Tensor],
                positions: int = 4096, ridge: float = 1e-3) -> dict[str, dict[str, float]]:
    """Refit every pruned conv by least squares, layer by layer in forward order (He et al. 2017).

    Pruning removes input channels a conv relied on. On the student's own (already refitted) inputs, each
    conv's weights are solved so its output matches the teacher conv's output at the channels it kept:
    ``min ||A W - Y||^2 + ridge * tr(A^T A)/k * ||W - W_0||^2`` over ``positions`` random output pixels per
    image, A the im2col patches. Returns each layer's relative error before and after.
    """
    family = get_family(student)
    teacher_layers = dict(teacher.named_modules())
    convs = [(n, m) for n, m in student.named_modules()
             if isinstance(m, nn.Conv2d) and m.groups == 1 and isinstance(teacher_layers.get(n), nn.Conv2d)]
    gen = torch.Generator().manual_seed(0)
    report = {}
    for name, conv in convs:
        channels = kept.get(name, list(range(conv.out_channels)))
        k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] + (conv.bias is not None)
        gram, cross = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, conv.out_channels, dtype=torch.float64)
        energy = torch.zeros((), dtype=torch.float64)
        for image in images:
            inputs = family.inputs(image)
            x = _layer_io(student, conv, inputs)[0]
            target = _layer_io(teacher, teacher_layers[name], inputs)[1][:, channels]
            cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
            a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            y = target.flatten(2).transpose(1, 2).reshape(-1, target.shape[1])
            pick = torch.randperm(a.shape[0], generator=gen)[:positions]
            a, y = a[pick].double(), y[pick].double()
            if conv.bias is not None:
                a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
            gram += a.T @ a
            cross += a.T @ y
            energy += y.pow(2).sum()
        w0 = conv.weight.flatten(1).T.double()
        if conv.bias is not None:
            w0 = torch.cat([w0, conv.bias[None].double()])
        lam = ridge * gram.diagonal().mean()
        w = torch.linalg.solve(gram + lam * torch.eye(k, dtype=gram.dtype), cross + lam * w0)
        report[name] = {"before": _relative_error(w0, gram, cross, energy),
                        "after": _relative_error(w, gram, cross, energy)}
        conv.weight.copy_(w[: k - (conv.bias is not None)].T.reshape(conv.weight.shape).float())
        if conv.bias is not None:
            conv.bias.copy_(w[-1].float())
    return report


def _relative_error(w: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, energy: torch.Tensor) -> float:
    """``||A w - Y||^2 / ||Y||^2`` from the accumulated sums ``A^T A``, ``A^T Y`` and ``||Y||^2``."""
    residual = (w.T @ gram @ w).trace() - 2 * (w * cross).sum() + energy
    return max(float(residual / energy.clamp_min(1e-12)), 0.0)


def _layer_io(model: nn.Module, layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of ``layer`` when ``model`` runs on ``inputs`` (the rest of the forward is skipped)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args, out):
        seen.append((args[0], out))
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(*inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


class _Stop(Exception):
    """Ends a forward pass once the hooked layer has run."""


def _drop_from_kept(group: tp.dependency.Group, names: dict[nn.Module, str], kept: dict[str, list[int]]) -> None:
    """Remove a group's output channels from ``kept`` (original indices) for every conv/linear it prunes.

    Every coupled layer is in the group (the residual trunk prunes together), so each layer's kept list
    stays exact; indices are relative to the layer's current width, as torch-pruning gives them.
    """
    for dep, idxs in group:
        name = names.get(dep.layer)
        if name in kept and dep.pruning_fn in (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels):
            drop = {int(i) for i in idxs}
            kept[name] = [k for j, k in enumerate(kept[name]) if j not in drop]


def model_stats(model: nn.Module, example_inputs: Any = None) -> dict[str, Any]:
    """MACs, parameters and per-layer output widths (for the stage's meta and the CLI)."""
    inputs = example_inputs if example_inputs is not None else example_inputs_for(model, 256)
    macs, params = tp.utils.count_ops_and_params(model, inputs)
    widths = {name: m.weight.shape[0] for name, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    return {"macs": int(macs), "params": int(params), "widths": widths, "macs_at": list(_shape(inputs))}


def _shape(inputs: Any) -> tuple[int, ...]:
    return tuple((inputs[0] if isinstance(inputs, tuple) else inputs).shape)


def prune_and_refit(model: nn.Module, config: PruneStage, content: str | Path = "samples",
                    finetune: Finetune | None = None) -> tuple[nn.Module, dict[str, dict[str, float]] | None]:
    """A pruned copy of ``model`` and, with ``config.reconstruct``, its least-squares refit on crops of ``content``
    (the refit's per-conv errors, else None)."""
    pruned = prune_model(copy.deepcopy(model), config, finetune=finetune).cpu()
    if not config.reconstruct:
        return pruned, None
    images = calibration_crops(content, config.reconstruct_images)
    refit = reconstruct(pruned, model, pruned.kept_out_channels, images)
    log.info("prune: least-squares refit of %d convs (mean relative error %.3f -> %.3f)", len(refit),
             sum(r["before"] for r in refit.values()) / len(refit),
             sum(r["after"] for r in refit.values()) / len(refit))
    return pruned, refit


def prune_dir(model_dir: str | Path, out_dir: str | Path, config: PruneStage, finetune: Finetune | None = None,
              meta: dict[str, Any] | None = None, content: str = "samples") -> dict[str, Any]:
    """Load a model folder, prune it, save it; returns the meta written next to it (``meta`` merged in)."""
    teacher = load_model(model_dir)
    before = model_stats(teacher)
    model, refit = prune_and_refit(teacher, config, content, finetune)
    after = model_stats(model)
    meta = {
        **(meta or {}),
        "source": str(model_dir),
        "prune": config.model_dump(mode="json"),
        "importance": "L1 group magnitude (conv/linear in+out, InstanceNorm gamma; per-layer mean-normalised)",
        "before": before,
        "after": after,
        "macs_ratio": after["macs"] / before["macs"],
        "reconstruct": refit,
        "params_ratio": after["params"] / before["params"],
    }
    save_model(model, out_dir, meta=meta)
    return meta


def calibration_crops(content: str | Path, n: int, size: int = 128) -> list[torch.Tensor]:
    """``n`` (1, 3, size, size) crops of the training content images (never the held-out evaluation photos)."""
    data = ContentCrops(resolve_images(content, "train"), size)
    return [data[i][None] for i in range(n)]
