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

import fnmatch
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function as tpf

from compressor.config import DistillStage, PruneStage
from compressor.data import ContentCrops, resolve_images
from compressor.distill import make_objective, prepare_run, train
from compressor.models import get_family, load_model, save_model

log = logging.getLogger(__name__)

Finetune = Callable[[nn.Module, int], None]
"""Called as ``finetune(model, step)`` after each iterative pruning step but the last."""

_PRUNABLE = (nn.Conv2d, nn.Linear)


class L1Importance(tp.importance.GroupMagnitudeImportance):
    """L1 magnitude of a coupled group in which every layer counts equally, InstanceNorm included.

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
        scores, root_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            if fn in (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels):
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


def _matching(layers: dict[str, nn.Module], pattern: str, option: str) -> list[nn.Module]:
    hits = [m for name, m in layers.items() if fnmatch.fnmatchcase(name, pattern)]
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

    ``config.overrides`` maps layer-name globs to their own ratio,
    ``config.ignore`` lists globs never pruned. With ``iterative_steps`` > 1 the
    ratio is reached in equal steps, ``finetune(model, step)`` running between them. The model's
    family says which layers keep their width and may adjust the result (``before_prune`` / ``after_prune``).
    """
    family = get_family(model)
    state = family.before_prune(model, config, finetune is not None)
    layers = prunable_layers(model)
    ignored = family.protected_layers(model, config)
    for pattern in config.ignore:
        ignored += _matching(layers, pattern, "ignore")
    ratios = {m: ratio for pattern, ratio in config.overrides.items() for m in _matching(layers, pattern, "override")}
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
    for step in range(config.iterative_steps):
        pruner.step()
        if finetune is not None and step + 1 < config.iterative_steps:
            finetune(model, step)
            model.eval()
    family.after_prune(model, config, state, _kept_out_channels(pruner, model))
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    model.spec = model.current_spec()
    return model.train(was_training)


def _kept_out_channels(pruner: tp.pruner.BasePruner, model: nn.Module) -> dict[str, list[int]]:
    """Original indices of the output channels each layer kept, replayed from torch-pruning's history."""
    kept = {name: list(range(pruner.layer_init_out_ch[m])) for name, m in model.named_modules()
            if isinstance(m, _PRUNABLE)}
    for name, is_out, idxs in pruner.pruning_history():
        if is_out and name in kept:  # group roots are convs/linears; a custom pruner's layer may not be
            drop = {int(i) for i in idxs}
            kept[name] = [k for j, k in enumerate(kept[name]) if j not in drop]
    return kept


def model_stats(model: nn.Module, example_inputs: Any = None) -> dict[str, Any]:
    """MACs, parameters and per-layer output widths (for the stage's meta and the CLI)."""
    inputs = example_inputs if example_inputs is not None else example_inputs_for(model, 256)
    macs, params = tp.utils.count_ops_and_params(model, inputs)
    widths = {name: m.weight.shape[0] for name, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    return {"macs": int(macs), "params": int(params), "widths": widths, "macs_at": list(_shape(inputs))}


def _shape(inputs: Any) -> tuple[int, ...]:
    return tuple((inputs[0] if isinstance(inputs, tuple) else inputs).shape)


def prune_dir(model_dir: str | Path, out_dir: str | Path, config: PruneStage, finetune: Finetune | None = None,
              meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a model folder, prune it, save it; returns the meta written next to it (``meta`` merged in)."""
    model = load_model(model_dir)
    before = model_stats(model)
    prune_model(model, config, finetune=finetune).cpu()
    after = model_stats(model)
    meta = {
        **(meta or {}),
        "source": str(model_dir),
        "prune": config.model_dump(mode="json"),
        "importance": "L1 group magnitude (conv/linear in+out, InstanceNorm gamma; per-layer mean-normalised)",
        "before": before,
        "after": after,
        "macs_ratio": after["macs"] / before["macs"],
        "params_ratio": after["params"] / before["params"],
    }
    save_model(model, out_dir, meta=meta)
    return meta


def prune_stage(ctx) -> None:
    """Recipe stage ``prune``: teacher/ -> pruned/, fine-tuning against the teacher between iterative steps."""
    config: PruneStage = ctx.recipe.prune
    if config.finetune_steps_between and config.iterative_steps > 1:
        meta = {"loss_network": ctx.loss_network.weights_source}
        prune_dir(ctx.stage_dir("model"), ctx.stage_dir("prune"), config, _pipeline_finetune(ctx, config), meta)
    else:
        prune_dir(ctx.stage_dir("model"), ctx.stage_dir("prune"), config)


def _pipeline_finetune(ctx, config: PruneStage) -> Finetune:
    """Distil the partly pruned model from the teacher for ``finetune_steps_between`` steps.

    Uses the recipe's distill settings (or their defaults) for everything but the step count.
    """
    n = config.finetune_steps_between
    train_config = (ctx.recipe.distill or DistillStage()).model_copy(update={"steps": n, "checkpoint_every": n})
    data = ContentCrops(resolve_images(ctx.recipe.content, "train"), train_config.crop)
    run = prepare_run(ctx.loss_network, load_model(ctx.stage_dir("model")), ctx.style_grams)

    def finetune(model: nn.Module, step: int) -> None:
        objective = make_objective(model, run.teacher, train_config, run.vgg, run.grams)
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as tmp:
            train(model, objective, data, train_config, tmp, progress=ctx.progress, device=run.device)
        log.info("prune: fine-tuned %d steps after pruning step %d", n, step + 1)

    return finetune
