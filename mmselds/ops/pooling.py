"""Selective pooling: the low-resolution value of a full-resolution cell.

Two layouts are pooled the same way: an (N, C, H, W) map, cell by cell, and
(K, 4, C) cell rows (the 4 pixels of K cells, sub-pixels ordered top-left,
top-right, bottom-left, bottom-right).
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLING_MODES = ('stride', 'avg', 'max', 'adaptive')


class SelectivePooling(nn.Module):
    """Pooling of a 2x2 cell to one value (DESIGN §2).

    Args:
        mode (str): ``'stride'`` (the cell's top-left pixel, what a stride-2
            conv samples), ``'avg'``, ``'max'`` or ``'adaptive'`` (a learned,
            per-channel softmax-weighted average of the 4 pixels, initialised
            to ``'avg'``). Default: ``'stride'``.
        channels (int, optional): number of channels; required by
            ``'adaptive'``, ignored otherwise. Default: None.
    """

    def __init__(self, mode: str = 'stride', channels: Optional[int] = None):
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f'unknown pooling mode {mode!r}; expected one of '
                             f'{POOLING_MODES}')
        self.mode = mode
        self.channels = channels
        if mode == 'adaptive':
            if not isinstance(channels, int) or channels < 1:
                raise ValueError('adaptive pooling needs channels (a positive '
                                 f'int), got {channels!r}')
            # logits of the 4 sub-pixel weights; zeros = average pooling
            self.logits = nn.Parameter(torch.zeros(channels, 4))

    def extra_repr(self) -> str:
        return f'mode={self.mode!r}' + (
            f', channels={self.channels}' if self.mode == 'adaptive' else '')

    def weights(self) -> Tensor:
        """(C, 4) softmax weights of the adaptive mode."""
        return self.logits.softmax(dim=1)

    def _check_channels(self, channels: int) -> None:
        if self.mode == 'adaptive' and channels != self.channels:
            raise ValueError(f'adaptive pooling was built for {self.channels} '
                             f'channels, got a feature with {channels}')

    def forward(self, x: Tensor) -> Tensor:
        """Pool an (N, C, H, W) map (H, W even) to (N, C, H/2, W/2)."""
        if x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError('pooling needs an (N, C, H, W) map with even H '
                             f'and W, got {tuple(x.shape)}')
        self._check_channels(x.shape[1])
        if self.mode == 'stride':
            return x[:, :, ::2, ::2]
        if self.mode == 'avg':
            return F.avg_pool2d(x, 2)
        if self.mode == 'max':
            return F.max_pool2d(x, 2)
        w = self.weights().to(x.dtype)
        out = 0
        for q in range(4):
            sub = x[:, :, q // 2::2, q % 2::2]
            out = out + sub * w[:, q].view(1, -1, 1, 1)
        return out

    def pool_rows(self, quads: Tensor) -> Tensor:
        """Pool (K, 4, C) cell rows to (K, C)."""
        self._check_channels(quads.shape[-1])
        if self.mode == 'stride':
            return quads[:, 0]
        if self.mode == 'avg':
            return quads.mean(1)
        if self.mode == 'max':
            return quads.amax(1)
        # a broadcast multiply and a sum over the 4 sub-pixels: 5-20x faster
        # on the CPU than the einsum 'kqc,cq->kc', which runs as C batched
        # (K, 4) x (4, 1) matmuls
        weights = self.weights().to(quads.dtype).t()  # (4, C)
        return (quads * weights).sum(1)


PoolSpec = Union[str, SelectivePooling]


def as_pooling(pool: PoolSpec) -> SelectivePooling:
    """A :class:`SelectivePooling` from a module or a parameter-free mode."""
    if isinstance(pool, SelectivePooling):
        return pool
    if pool == 'adaptive':
        raise ValueError('adaptive pooling has learned weights: pass a '
                         'SelectivePooling(mode="adaptive", channels=C) '
                         'module, not the string')
    if not isinstance(pool, str):
        raise ValueError('pool must be a mode string or a SelectivePooling '
                         f'module, got {type(pool).__name__}')
    return SelectivePooling(pool)
