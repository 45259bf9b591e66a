import math
import numbers
from typing import Optional

import torch
from mmseg.registry import MODELS
from torch import Tensor, nn

SPARSITY_MODES = ('target', 'target-free')


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@MODELS.register_module()
class SparsityLoss(nn.Module):
    """Loss on the down-sampling ratio s = mean(M).

    Args:
        mode (str): ``'target'`` (CAD): ``(s - t)^2`` pulls s towards
            ``target``; ``'target-free'`` (the letter's Prop. 2):
            ``1 - s`` rewards down-sampling with no target, balanced only by
            the segmentation loss. Default: ``'target'``.
        target (float, optional): target ratio t in [0, 1]; required by
            ``'target'``, refused by ``'target-free'``. Default: None.
        loss_weight (float): weight of the loss. Default: 1.0.
        loss_name (str): key in the loss dict; must contain ``loss`` so that
            mmengine trains on it. Default: ``'loss_sparsity'``.
    """

    def __init__(self, mode: str = 'target', target: Optional[float] = None,
                 loss_weight: float = 1.0, loss_name: str = 'loss_sparsity'):
        super().__init__()
        if mode not in SPARSITY_MODES:
            raise ValueError(f'unknown sparsity loss mode {mode!r}; expected '
                             f'one of {SPARSITY_MODES}')
        if mode == 'target' and not (_real(target) and 0 <= target <= 1):
            raise ValueError('the target sparsity loss needs target in '
                             f'[0, 1], got {target!r}')
        if not (_real(loss_weight) and math.isfinite(loss_weight)
                and loss_weight >= 0):
            raise ValueError('loss_weight must be a number >= 0 (0 turns '
                             f'the loss off), got {loss_weight!r}')
        if mode == 'target-free' and target is not None:
            raise ValueError('the target-free sparsity loss takes no target')
        if 'loss' not in loss_name:
            raise ValueError(f'loss_name must contain "loss", got {loss_name}')
        self.mode, self.target = mode, target
        self.loss_weight, self.loss_name = loss_weight, loss_name

    def forward(self, mask: Tensor) -> Tensor:
        """Weighted loss of an (N, 1, h, w) mask (1 = down-sample)."""
        s = mask.mean()
        if not torch.isfinite(s):
            raise ValueError('the down-sampling mask contains NaN or Inf')
        loss = (s - self.target)**2 if self.mode == 'target' else 1 - s
        return self.loss_weight * loss
