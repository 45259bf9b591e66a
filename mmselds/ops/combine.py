"""Ops that combine or summarise mixed features, and the backbone's output.

* :class:`SelectiveOutputs`: the dense stage outputs mmseg heads index,
  carrying the stage-4 :class:`MixedFeature` and its :class:`CellMask` on to
  a selective neck or head.
* :func:`mixed_cat`: channel concatenation of features under the same cells.
* :func:`mixed_global_avg_pool`: the mean of the densified map (a low cell
  weighs as its 4 pixels), computed without densifying.
* :func:`mixed_broadcast`: one vector per image as a mixed feature.
"""
import functools
import math
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

from .amp import autocast_dtype
from .feature import MixedFeature
from .mask import CellMask
from .versions import version


class SelectiveOutputs(tuple):
    """A tuple of dense stage outputs that also carries the selection.

    Stock mmseg heads and necks index or iterate it as the plain tuple a
    backbone returns; a selective head reads ``mixed`` (the last stage's
    mixed-resolution feature, before densifying), the segmentor ``cells``
    (the selection of the pass: its mask feeds the sparsity loss and the
    ratio metric). Slicing gives a plain tuple.

    An output may be given as a :class:`MixedFeature`: it is densified when
    it is first read (indexing, iteration, slicing, unpacking) and the map
    kept, so an output no head reads (stage 3 in inference, or stage 4 when
    the decode head is selective) is never densified. Reading it after its
    data was changed in place raises. Functions that read the tuple's items
    in C without Python indexing (``torch.cat(outputs)``) see the
    :class:`MixedFeature` and raise; ``torch.cat(tuple(outputs))`` works.

    Args:
        outs (Iterable[Tensor | MixedFeature]): the (N, C, H, W) outputs.
        mixed (MixedFeature, optional): the mixed feature the last of
            ``outs`` is the densified map of. Default: None.
        cells (CellMask, optional): the selection; default ``mixed.cells``.
    """

    def __new__(cls, outs: Iterable = (),
                mixed: Optional[MixedFeature] = None,
                cells: Optional[CellMask] = None):
        return super().__new__(cls, outs)

    def __init__(self, outs: Iterable = (),
                 mixed: Optional[MixedFeature] = None,
                 cells: Optional[CellMask] = None):
        if mixed is not None and not isinstance(mixed, MixedFeature):
            raise ValueError('mixed must be a MixedFeature, got '
                             f'{type(mixed).__name__}')
        if cells is not None and not isinstance(cells, CellMask):
            raise ValueError('cells must be a CellMask, got '
                             f'{type(cells).__name__}')
        if mixed is not None and cells is not None \
                and mixed.cells is not cells:
            raise ValueError('mixed is under other cells than cells')
        self.mixed = mixed
        self.cells = cells if cells is not None else \
            (None if mixed is None else mixed.cells)
        self._dense = {}
        for i in range(len(self)):
            item = tuple.__getitem__(self, i)
            if isinstance(item, MixedFeature):
                # to check at reading (None: an inference tensor)
                self._dense[i] = version(item.data)
            elif not isinstance(item, Tensor):
                raise ValueError('outputs must be tensors or MixedFeatures, '
                                 f'got {type(item).__name__} at {i}')

    def _read(self, i: int) -> Tensor:
        item = tuple.__getitem__(self, i)
        if not isinstance(item, MixedFeature):
            return item
        i %= len(self)
        kept = self._dense[i]
        if isinstance(kept, Tensor):
            return kept
        if kept is not None and version(item.data) != kept:
            raise RuntimeError(
                f'output {i} was changed in place after the backbone '
                'returned it and before it was densified')
        self._dense[i] = dense = item.densify()
        return dense

    def output_shape(self, index: int) -> tuple:
        """(N, C, H, W) of an output, without densifying it."""
        return tuple(tuple.__getitem__(self, index).shape)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self._read(i) for i in range(len(self))[index])
        return self._read(index)

    def __iter__(self):
        return (self._read(i) for i in range(len(self)))

    def __add__(self, other):
        return tuple(self) + tuple(other)

    def __radd__(self, other):
        return tuple(other) + tuple(self)

    def __repr__(self) -> str:
        items = ', '.join(
            repr(tuple.__getitem__(self, i)) if not isinstance(
                tuple.__getitem__(self, i), Tensor) else
            f'Tensor{tuple(tuple.__getitem__(self, i).shape)}'
            for i in range(len(self)))
        return (f'SelectiveOutputs(({items}), mixed={self.mixed!r}, '
                f'cells={self.cells!r})')


def _check_same_cells(feats: Sequence[MixedFeature], what: str) -> None:
    if not feats:
        raise ValueError(f'{what} needs at least one feature')
    for f in feats:
        if not isinstance(f, MixedFeature):
            raise ValueError(f'{what} takes MixedFeatures, got '
                             f'{type(f).__name__}')
        if f.cells is not feats[0].cells:
            raise ValueError(f'{what} needs features under the same '
                             'CellMask')


class _CatFeature(MixedFeature):
    """Sparse rows concatenated along channels, kept as their blocks until
    ``data`` is read (then concatenated once): a selective conv reads the
    blocks (:meth:`row_blocks`), and a matmul of a concatenation is the sum
    of its blocks' matmuls, so the concatenation need not be formed."""

    def __init__(self, blocks: Sequence[Tensor], cells: CellMask, pool):
        self._blocks = tuple(blocks)
        self._data = None
        super().__init__(None, cells, pool)

    @property
    def data(self) -> Tensor:
        if self._data is None:
            self._data = torch.cat(self._blocks, dim=1)
        return self._data

    @data.setter
    def data(self, value: Optional[Tensor]) -> None:
        self._data = value

    def row_blocks(self) -> tuple:
        return self._blocks if self._data is None else (self._data, )

    def to(self, dtype: torch.dtype) -> MixedFeature:
        if self._data is not None or all(b.dtype == dtype
                                         for b in self._blocks):
            return super().to(dtype)
        return _CatFeature([b.to(dtype) for b in self._blocks], self.cells,
                           self.pool)

    @property
    def channels(self) -> int:
        return sum(b.shape[1] for b in self._blocks)

    @property
    def dtype(self) -> torch.dtype:
        return self._blocks[0].dtype

    @property
    def device(self) -> torch.device:
        return self._blocks[0].device


def mixed_cat(feats: Sequence[MixedFeature]) -> MixedFeature:
    """Concatenate mixed features along channels (dim 1 of the dense map or
    of the sparse rows, which share one row order). The result takes the
    first feature's pooling. Features of different dtypes are refused,
    except under ``torch.autocast``, where they are promoted as
    ``torch.cat`` promotes them.

    In sparse execution the result keeps the features' rows as blocks and
    forms the concatenation only where it is read as one tensor (``data``):
    a selective conv reads the blocks (the ASPP head's bottleneck never
    copies its 5 x 512 input channels into one matrix)."""
    feats = list(feats)
    _check_same_cells(feats, 'mixed_cat')
    dtypes = {b.dtype for f in feats for b in f.row_blocks()}
    if len(dtypes) > 1:
        if autocast_dtype(feats[0].device) is None:
            raise ValueError('mixed_cat needs features of one dtype, got '
                             + ', '.join(sorted(map(str, dtypes))))
        common = functools.reduce(torch.promote_types, dtypes)
        feats = [f.to(common) for f in feats]
    if feats[0].execution == 'sparse':
        blocks = [b for f in feats for b in f.row_blocks()]
        return _CatFeature(blocks, feats[0].cells, feats[0].pool)
    return feats[0].new(torch.cat([f.data for f in feats], dim=1))


def row_images(cells: CellMask) -> Tensor:
    """(R,) image index of each sparse row: low cells, then high pixels."""
    cells._require_sparse()
    key = ('row_images', )
    if key not in cells._cache:
        cells._cache[key] = torch.cat([cells.low_nij[0], cells.high_nyx[0]])
    return cells._cache[key]


def mixed_global_avg_pool(feat: MixedFeature) -> Tensor:
    """(N, C, 1, 1) mean over the image of the densified map: a low cell
    counts as its 4 pixels, as in the dense network's global pooling.

    Sparse execution sums the rows weighted 4 (low cells) or 1 (pixels) per
    image; no densified map is formed. float16 / bfloat16 rows are summed
    with float32 accumulation.
    """
    if not isinstance(feat, MixedFeature):
        raise ValueError('mixed_global_avg_pool takes a MixedFeature, got '
                         f'{type(feat).__name__}')
    if feat.execution == 'dense':
        return feat.data.mean(dim=(2, 3), keepdim=True)
    cells = feat.cells
    H, W = cells.feature_size
    if cells.num_low == 0:  # the rows are the NHWC map
        pooled = feat.data.view(cells.n, H * W, -1).mean(1)
    elif feat.dtype in (torch.float16, torch.bfloat16):
        pooled = _mean_rows_16bit(feat.data, cells, H * W)
    else:  # per-image sums of the low rows (x4) and of the pixel rows
        S, data = cells.num_low, feat.data
        images = row_images(cells)
        low = data.new_zeros(cells.n, feat.channels).index_add_(
            0, images[:S], data[:S])
        pooled = low.mul_(4).index_add_(0, images[S:], data[S:]) / (H * W)
    return pooled[:, :, None, None]


def _mean_rows_16bit(data: Tensor, cells: CellMask, count: int) -> Tensor:
    """(N, C) per-image means of 16-bit sparse rows (low rows weigh 4) as
    one matmul, which accumulates in float32 as ``torch.mean`` does; the
    weights are scaled by a power of two (exact) so that the sums stay in
    float16's range. ``index_add_`` would sum in float16: ~1e4 rows of
    unit values overflow (65504) or stop growing."""
    scale = 2.0 ** -math.ceil(math.log2(count))
    R = data.shape[0]
    weights = data.new_full((R, ), scale)
    weights[:cells.num_low] = 4 * scale
    mat = data.new_zeros(cells.n, R)
    mat[row_images(cells), torch.arange(R, device=data.device)] = weights
    return (mat @ data) * (1 / (count * scale))


def mixed_broadcast(vec: Tensor, cells: CellMask,
                    pool='stride') -> MixedFeature:
    """The mixed feature equal to ``vec[n]`` at every position of image n.

    Args:
        vec (Tensor): (N, C) or (N, C, 1, 1).
        cells (CellMask): the selection of the result.
    """
    if vec.dim() == 4 and vec.shape[2:] == (1, 1):
        vec = vec.flatten(1)
    if vec.dim() != 2 or vec.shape[0] != cells.n:
        raise ValueError(f'vec must have shape ({cells.n}, C) or '
                         f'({cells.n}, C, 1, 1), got {tuple(vec.shape)}')
    if cells.execution == 'dense':
        H, W = cells.feature_size
        data = vec[:, :, None, None].expand(-1, -1, H, W)
        return MixedFeature(data, cells, pool)
    if cells.num_low == 0:
        H, W = cells.feature_size
        rows = vec[:, None, :].expand(-1, H * W, -1).reshape(-1, vec.shape[1])
        return MixedFeature(rows, cells, pool)
    return MixedFeature(vec.index_select(0, row_images(cells)), cells, pool)
