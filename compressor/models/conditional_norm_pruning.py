"""torch-pruning pruners for the conditional norms (imported only when pruning).

torch-pruning hands a customized layer the channel indices its coupled conv
drops; these pruners remove the same channels from the norm's gamma/beta
tables or from the output features of its dense layers, so the layers come
out really narrower. ``prune_in_channels = prune_out_channels`` couples the
norm's input and output (the channels pass straight through it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from compressor.models.conditional_norm import ConditionalInstanceNorm, StyleVectorNorm


def _keep(n: int, idxs: Sequence[int]) -> list[int]:
    drop = {int(i) for i in idxs}
    return [i for i in range(n) if i not in drop]


class ConditionalInstanceNormPruner(tp.pruner.BasePruningFunc):
    TARGET_MODULES = ConditionalInstanceNorm

    def prune_out_channels(self, layer: ConditionalInstanceNorm, idxs: Sequence[int]) -> nn.Module:
        keep = _keep(layer.channels, idxs)
        layer.gamma = self._prune_parameter_and_grad(layer.gamma, keep, 1)
        layer.beta = self._prune_parameter_and_grad(layer.beta, keep, 1)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: ConditionalInstanceNorm) -> int:
        return layer.channels

    get_in_channels = get_out_channels

    @torch.no_grad()
    def channel_importance(self, layer: ConditionalInstanceNorm, idxs: Sequence[int]) -> torch.Tensor:
        """Mean |gamma| over the styles: after the norm, gamma is what sets a channel's scale."""
        return layer.gamma[:, list(idxs)].abs().mean(0)


class StyleVectorNormPruner(tp.pruner.BasePruningFunc):
    TARGET_MODULES = StyleVectorNorm

    def prune_out_channels(self, layer: StyleVectorNorm, idxs: Sequence[int]) -> nn.Module:
        keep = _keep(layer.channels, idxs)
        for dense in (layer.gamma, layer.beta):
            dense.weight = self._prune_parameter_and_grad(dense.weight, keep, 0)
            dense.bias = self._prune_parameter_and_grad(dense.bias, keep, 0)
            dense.out_features = len(keep)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: StyleVectorNorm) -> int:
        return layer.channels

    get_in_channels = get_out_channels

    @torch.no_grad()
    def channel_importance(self, layer: StyleVectorNorm, idxs: Sequence[int]) -> torch.Tensor:
        """L1 of each channel's gamma row and bias: the style-dependent scale it can take."""
        idxs = list(idxs)
        return layer.gamma.weight[idxs].abs().sum(1) + layer.gamma.bias[idxs].abs()


CUSTOMIZED_PRUNERS: dict[type, tp.pruner.BasePruningFunc] = {
    ConditionalInstanceNorm: ConditionalInstanceNormPruner(),
    StyleVectorNorm: StyleVectorNormPruner(),
}
