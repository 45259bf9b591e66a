"""The mixed-resolution feature map (DESIGN §2).

A feature at OS8 of size (N, C, H, W) under a cell mask M (N, 1, h, w) holds
``hi`` (full-resolution values, meaningful where M = 0) and ``lo`` (one value
per cell: the cell's own where M = 1, ``pool(hi)`` where M = 0).

Both executions store the same function of (hi, lo, M):

* dense: V = densify(hi, lo) as an (N, C, H, W) tensor. V is constant on low
  cells, so ``lo = pool(V)`` for every pooling mode and need not be stored.
* sparse: (R, C) rows in the order fixed by :class:`CellMask` (low cells,
  then the pixels of the high cells); low-resolution values of high cells
  are pooled from their 4 rows when a layer reads them.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .mask import CellMask
from .pooling import PoolSpec, SelectivePooling, as_pooling


def upsample2(x: Tensor) -> Tensor:
    """Nearest x2 up-sampling of an (N, C, h, w) map."""
    return F.interpolate(x, scale_factor=2.0, mode='nearest')


def blend(hi: Tensor, lo: Tensor, mask: Tensor) -> Tensor:
    """V = hi where M = 0, up(lo) where M = 1; linear in M, so a
    straight-through mask receives the gradient ``sum_cell (up(lo) - hi)``.
    Exact for binary masks (``hi * 0 + lo * 1`` is ``lo``)."""
    m = upsample2(mask.to(hi.dtype))
    return hi * (1 - m) + upsample2(lo) * m


def to_rows(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N*H*W, C) raster rows (free for channels-last x)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class MixedFeature:
    """A mixed-resolution feature under a :class:`CellMask`.

    Args:
        data (Tensor): (N, C, H, W) V for dense execution, (R, C) rows for
            sparse execution.
        cells (CellMask): the selection shared by the layers of one pass.
        pool (str | SelectivePooling): how the low-resolution value of a
            full-resolution cell is formed when a layer reads it.
            Default: ``'stride'``.
    """

    def __init__(self, data: Tensor, cells: CellMask,
                 pool: PoolSpec = 'stride'):
        self.data = data
        self.cells = cells
        self.pool = as_pooling(pool)

    # --------------------------------------------------------- construction
    @classmethod
    def from_dense(cls, x: Tensor, cells: CellMask,
                   pool: PoolSpec = 'stride') -> 'MixedFeature':
        """The feature with ``hi = x`` and ``lo = pool(x)``.

        Args:
            x (Tensor): (N, C, H, W) full-resolution map.

        Sparse rows of a channels-last ``x`` with no low cell are a view of
        ``x`` (no copy), as ``Tensor.view`` would share memory: in-place
        ops on the feature then change ``x``.
        """
        cells.check_feature(x)
        pool = as_pooling(pool)
        if cells.execution == 'dense':
            return cls(blend(x, pool(x), cells.mask), cells, pool)
        rows = to_rows(x)
        if cells.num_low == 0:  # the rows are the NHWC map
            return cls(rows, cells, pool)
        quads = rows.index_select(0, cells.low_quad_pixels)  # low cells only
        lo = pool.pool_rows(quads.view(-1, 4, x.shape[1]))
        if cells.num_high == 0:
            return cls(lo, cells, pool)
        return cls(torch.cat([lo, rows.index_select(0, cells.high_pixels())]),
                   cells, pool)

    @classmethod
    def from_hi_lo(cls, hi: Tensor, lo: Tensor, cells: CellMask,
                   pool: PoolSpec = 'stride') -> 'MixedFeature':
        """The feature with the given ``hi`` (read at M = 0) and ``lo`` (read
        at M = 1; at M = 0 it is ``pool(hi)`` by definition).

        Args:
            hi (Tensor): (N, C, H, W).
            lo (Tensor): (N, C, H/2, W/2).
        """
        cells.check_feature(hi, 'hi')
        if lo.shape != hi.shape[:2] + cells.shape[2:]:
            raise ValueError(f'lo must have shape (N, C, H/2, W/2) = '
                             f'{tuple(hi.shape[:2] + cells.shape[2:])}, '
                             f'got {tuple(lo.shape)}')
        if cells.execution == 'dense':
            return cls(blend(hi, lo, cells.mask), cells, pool)
        rows = torch.cat([to_rows(lo).index_select(0, cells.low_cells),
                          to_rows(hi).index_select(0, cells.high_pixels())])
        return cls(rows, cells, pool)

    def new(self, data: Tensor, pool: Optional[PoolSpec] = None
            ) -> 'MixedFeature':
        """A feature with other data under the same cells."""
        return MixedFeature(data, self.cells,
                            self.pool if pool is None else pool)

    def to(self, dtype: torch.dtype) -> 'MixedFeature':
        """The feature in ``dtype`` (itself when it is in ``dtype``)."""
        if all(b.dtype == dtype for b in self.row_blocks()):
            return self
        return self.new(self.data.to(dtype))

    # -------------------------------------------------------------- queries
    @property
    def execution(self) -> str:
        return self.cells.execution

    @property
    def channels(self) -> int:
        return self.data.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def shape(self):
        """(N, C, H, W) of the densified map."""
        return (self.cells.n, self.channels) + self.cells.feature_size

    def row_blocks(self) -> Tuple[Tensor, ...]:
        """Channel blocks whose concatenation is ``data``: ``(data,)``, or
        the features of a sparse :func:`~mmselds.ops.mixed_cat`, which a
        selective conv reads without forming their concatenation."""
        return (self.data, )

    def densify(self) -> Tensor:
        """(N, C, H, W): hi at full-resolution cells, lo replicated at
        down-sampled cells."""
        if self.execution == 'dense':
            return self.data
        N, C, H, W = self.shape
        rows = self.data if self.cells.num_low == 0 else \
            self.data.index_select(0, self.cells.pix_row)
        return rows.view(N, H, W, C).permute(0, 3, 1, 2)

    @property
    def hi(self) -> Tensor:
        """(N, C, H, W); meaningful at full-resolution cells."""
        return self.densify()

    @property
    def lo(self) -> Tensor:
        """(N, C, H/2, W/2): own value at low cells, pool(hi) at high cells."""
        return self.pool(self.densify())

    def pooled_rows(self, pool: Optional[SelectivePooling] = None) -> Tensor:
        """(K, C) low-resolution values of the high cells (sparse only)."""
        pool = self.pool if pool is None else as_pooling(pool)
        quads = self.data.index_select(0, self.cells.quad_rows)
        return pool.pool_rows(quads.view(-1, 4, self.channels))

    # ----------------------------------------------------------- arithmetic
    def map(self, fn: Callable[[Tensor], Tensor]) -> 'MixedFeature':
        """Apply an element-wise function (ReLU, scaling, ...)."""
        return self.new(fn(self.data))

    def _inplace_ok(self) -> bool:
        """In-place updates are safe when autograd records nothing."""
        return not (torch.is_grad_enabled() and self.data.requires_grad)

    def relu(self) -> 'MixedFeature':
        return self.map(F.relu)

    def relu_(self) -> 'MixedFeature':
        """ReLU in place when no gradient is recorded (inference), else a new
        feature, as ``nn.ReLU(inplace=True)`` under autograd would need."""
        if not self._inplace_ok():
            return self.relu()
        self.data.relu_()
        return self

    def __add__(self, other: 'MixedFeature') -> 'MixedFeature':
        if not isinstance(other, MixedFeature):
            return NotImplemented
        if other.cells is not self.cells:
            raise ValueError('can only add features under the same CellMask')
        if other.data.shape != self.data.shape:
            raise ValueError(f'cannot add features of shapes {self.shape} '
                             f'and {other.shape}')
        return self.new(self.data + other.data)

    def add_relu_(self, other: 'MixedFeature') -> 'MixedFeature':
        """``relu(self + other)``, the end of a residual block, updating
        ``self`` in place when no gradient is recorded (as mmseg's blocks
        do), so inference holds one tensor less at the block's peak."""
        if not self._inplace_ok():
            return (self + other).relu()
        if other.cells is not self.cells or \
                other.data.shape != self.data.shape:
            raise ValueError('add_relu_ needs features of the same shape '
                             'under the same CellMask')
        self.data.add_(other.data).relu_()
        return self

    def __repr__(self) -> str:
        return (f'MixedFeature(shape={self.shape}, execution='
                f'{self.execution!r}, pool={self.pool.mode!r})')
