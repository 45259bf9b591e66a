"""The per-cell selection of one forward pass and its sparse index tables.

Shape shorthand: N batch, C channels, H x W the OS8 map, h x w = H/2 x W/2
the cell grid, S low (down-sampled) cells, K high (full-resolution) cells,
R = S + 4K active rows of a sparse feature.

Row order of a sparse feature (fixed by :class:`CellMask`): first the S low
cells in flat ``(n, i, j)`` order, then the 4K pixels of the high cells in
raster ``(n, y, x)`` order. With no low cell the rows are exactly the NHWC
map, so a mask that keeps everything at full resolution costs nothing.
"""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

EXECUTION_MODES = ('dense', 'sparse')


def check_execution(execution: str) -> str:
    if execution not in EXECUTION_MODES:
        raise ValueError(f'unknown execution mode {execution!r}; '
                         f'expected one of {EXECUTION_MODES}')
    return execution


def random_cell_mask(n: int, h: int, w: int, ratio: float,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """(n, 1, h, w) cell masks with ``round(ratio * h * w)`` down-sampled
    cells (1) in each image, at random places: forced masks for benchmarks
    and analysis."""
    if not 0 <= ratio <= 1:
        raise ValueError(f'down-sampling ratio must be in [0, 1], got {ratio}')
    mask = torch.zeros(n, h * w)
    k = round(ratio * h * w)
    for i in range(n):
        mask[i, torch.randperm(h * w, generator=generator)[:k]] = 1
    return mask.view(n, 1, h, w)


def expected_ratio_mask(prob: Tensor) -> Tensor:
    """The deterministic counterpart of a hard Gumbel-softmax sample.

    A hard Gumbel sample down-samples each cell with probability ``P``, so
    in expectation a fraction ``mean(P)`` of an image's cells. This rule
    down-samples exactly ``round(mean(P) * cells)`` cells of each image: the
    ones with the highest ``P`` (ties broken by raster order). It matches the
    training-time ratio by construction, with no state, per image (so the
    result does not depend on the batch) and whatever the scale of ``P``.

    Args:
        prob (Tensor): (N, 1, h, w) P(down-sample), in [0, 1].
    Returns:
        Tensor: (N, 1, h, w) binary mask of ``prob``'s dtype, 1 = down-sample.
    """
    if prob.dim() != 4 or prob.shape[1] != 1:
        raise ValueError('prob must have shape (N, 1, h, w), got '
                         f'{tuple(prob.shape)}')
    flat = prob.detach().flatten(1).float()
    cells = flat.shape[1]
    keep = (flat.mean(1) * cells).round().long()
    order = flat.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(cells, device=prob.device)
                  .expand_as(order))
    return (rank < keep[:, None]).to(prob.dtype).view_as(prob)


class CellMask:
    """The down-sampling decision of one forward pass, shared by all layers.

    Args:
        mask (Tensor): (N, 1, h, w); 1 = down-sample the cell (compute it
            once at OS16), 0 = keep it at full resolution (OS8). Dense
            execution accepts any float mask (a straight-through Gumbel mask
            carries gradients); sparse execution needs exact 0/1 values.
        execution (str): ``'dense'`` (emulation: compute both resolutions
            densely and blend; differentiable in the mask) or ``'sparse'``
            (compute only the active positions). Default: ``'dense'``.
    """

    def __init__(self, mask: Tensor, execution: str = 'dense'):
        self.execution = check_execution(execution)
        if not isinstance(mask, Tensor) or mask.dim() != 4 \
                or mask.shape[1] != 1:
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else mask
            raise ValueError(f'mask must have shape (N, 1, h, w), got {shape}')
        if not mask.is_floating_point():
            mask = mask.float()
        if execution == 'sparse':
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError('sparse execution needs a binary mask '
                                 '(values 0 or 1); got other values')
            mask = mask.detach()
        elif not bool(torch.isfinite(mask).all()):
            raise ValueError('mask contains NaN or Inf')
        self.mask = mask
        self.n, _, self.h, self.w = mask.shape
        self._cache: Dict[tuple, Tensor] = {}
        if execution == 'sparse':
            self._build_layout()

    # ------------------------------------------------------------ queries
    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """(N, 1, h, w) of the cell grid."""
        return tuple(self.mask.shape)

    @property
    def feature_size(self) -> Tuple[int, int]:
        """(H, W) of the OS8 maps this mask selects on."""
        return 2 * self.h, 2 * self.w

    def ratio(self) -> Tensor:
        """Down-sampling ratio s = mean(M) (a 0-dim tensor)."""
        return self.mask.mean()

    def upsampled(self) -> Tensor:
        """The mask at pixel resolution, (N, 1, H, W)."""
        return self.mask.repeat_interleave(2, 2).repeat_interleave(2, 3)

    def check_feature(self, x: Tensor, what: str = 'feature') -> None:
        """Raise ``ValueError`` unless ``x`` is (N, C, H, W) for this mask."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x)
            raise ValueError(f'{what} must be a 4-d (N, C, H, W) tensor, '
                             f'got {shape}')
        N, _, H, W = x.shape
        if H % 2 or W % 2:
            raise ValueError(f'{what} height and width must be even '
                             f'(2x2 cells), got {H}x{W}')
        if (N, H // 2, W // 2) != (self.n, self.h, self.w):
            raise ValueError(
                f'mask shape {self.shape} does not fit {what} of shape '
                f'{tuple(x.shape)}: expected (N, 1, H/2, W/2) = '
                f'({N}, 1, {H // 2}, {W // 2})')
        if x.device != self.mask.device:
            raise ValueError(f'{what} is on {x.device} but the mask is on '
                             f'{self.mask.device}')

    # ------------------------------------------------------ sparse layout
    def _build_layout(self) -> None:
        dev = self.mask.device
        n, h, w = self.n, self.h, self.w
        H, W = self.feature_size
        low = self.mask.reshape(-1) > 0.5
        self.low_cells = low.nonzero().squeeze(1)
        self.high_cells = (~low).nonzero().squeeze(1)
        S, K = self.low_cells.numel(), self.high_cells.numel()
        self.num_low, self.num_high = S, K
        self.num_rows = S + 4 * K
        cell_rank = torch.empty(low.numel(), dtype=torch.long, device=dev)
        cell_rank[self.low_cells] = torch.arange(S, device=dev)
        cell_rank[self.high_cells] = torch.arange(K, device=dev)
        # row of a cell's low-resolution value in cat([rows, zero, pooled])
        self.zero_row = self.num_rows
        self.cell_lorow = torch.where(low, cell_rank,
                                      self.num_rows + 1 + cell_rank)
        # cell of every pixel, raster order (N, H, W)
        ys = torch.arange(H, device=dev) // 2
        xs = torch.arange(W, device=dev) // 2
        pix_cell = (torch.arange(n, device=dev).view(n, 1, 1) * h +
                    ys.view(1, H, 1)) * w + xs.view(1, 1, W)
        pix_low = low[pix_cell.reshape(-1)]
        self._high_pixels = (~pix_low).nonzero().squeeze(1)
        pix_rank = torch.empty(pix_low.numel(), dtype=torch.long, device=dev)
        pix_rank[self._high_pixels] = S + torch.arange(4 * K, device=dev)
        # row of V(q) for every pixel q
        self.pix_row = torch.where(pix_low, cell_rank[pix_cell.reshape(-1)],
                                   pix_rank)
        # anchors of the output rows: low cells (n, i, j), high pixels
        # (n, y, x)
        hw = h * w
        lc = self.low_cells
        self.low_nij = (lc // hw, (lc % hw) // w, lc % w)
        hp = self._high_pixels
        self.high_nyx = (hp // (H * W), (hp % (H * W)) // W, hp % W)
        # rows of the 4 pixels of every high cell, sub-pixels TL, TR, BL, BR
        hc = self.high_cells
        top = self._top_left(hc)
        quad = torch.stack([top, top + 1, top + W, top + W + 1], 1)
        self.quad_rows = self.pix_row[quad.reshape(-1)]
        # raster pixels of the 4 sub-pixels of every low cell
        lc = self.low_cells
        top = self._top_left(lc)
        self.low_quad_pixels = torch.stack(
            [top, top + 1, top + W, top + W + 1], 1).reshape(-1)

    def _top_left(self, cells: Tensor) -> Tensor:
        """Raster pixel (flat ``(n, y, x)``) of the top-left pixel of each
        of the flat ``(n, i, j)`` ``cells``."""
        H, W = self.feature_size
        hw = self.h * self.w
        return ((cells // hw) * H + 2 * ((cells % hw) // self.w)) * W \
            + 2 * (cells % self.w)

    def _require_sparse(self) -> None:
        if self.execution != 'sparse':
            raise RuntimeError('sparse index tables need execution="sparse"')

    def _padded(self, name: str, table, height: int, width: int,
                outside: int) -> Tensor:
        """``table`` (flat ``(n, height, width)``; or a function returning
        it, called only when the frame is built) framed by ``outside``
        ``height`` rows above and below and ``width`` columns left and
        right, flat ``(n, 3 height, 3 width)``: every tap of any dilation
        reads it without a bounds test (see :meth:`_taps_into`)."""
        key = ('padded', name)
        if key not in self._cache:
            if callable(table):
                table = table()
            frame = table.new_full((self.n, 3 * height, 3 * width), outside)
            frame[:, height:2 * height, width:2 * width] = \
                table.view(self.n, height, width)
            self._cache[key] = frame.view(-1)
        return self._cache[key]

    def _anchors(self, name: str, n: Tensor, y: Tensor, x: Tensor,
                 height: int, width: int) -> Tensor:
        """(A, 1) flat positions of the anchors ``(n, y, x)`` in a table
        framed by :meth:`_padded`."""
        key = ('anchors', name)
        if key not in self._cache:
            self._cache[key] = ((n * (3 * height) + y + height) * (3 * width)
                                + x + width).view(-1, 1)
        return self._cache[key]

    def _taps_into(self, dilation: int, height: int, width: int) -> Tensor:
        """(1, 9) offsets of the 9 taps (row-major) in a framed table of a
        ``height`` x ``width`` map. A tap at least a whole map away lands in
        the frame from any anchor, so its offset is clipped to the frame."""
        dy, dx = min(dilation, height), min(dilation, width)
        row = 3 * width
        return torch.tensor([[-dy * row - dx, -dy * row, -dy * row + dx,
                              -dx, 0, dx,
                              dy * row - dx, dy * row, dy * row + dx]],
                            device=self.mask.device)

    def _high_anchors(self) -> Tensor:
        """The high pixels as anchors in a framed full-resolution table:
        both index tables read them."""
        H, W = self.feature_size
        return self._anchors('high', *self.high_nyx, H, W)

    def conv_index(self, dilation: int, pooled_rows: bool = True) -> Tensor:
        """(R, 9) source rows read by a 3x3 conv.

        High pixels read V with ``dilation``; low cells read the cell grid
        with ``max(dilation // 2, 1)``. A tap outside the map reads the zero
        row ``R``.

        Args:
            dilation (int): the OS8 dilation.
            pooled_rows (bool): index ``cat([rows, zero, pooled])``, where
                a high cell's low-resolution value is its pooled row
                (any pooling). False: index the feature's own rows, a high
                cell's low-resolution value being its top-left pixel's row
                (``stride`` pooling, read in place), and R (one past the
                rows) standing for the zero row. Default: True.
        """
        self._require_sparse()
        key = ('conv', dilation, pooled_rows)
        if key not in self._cache:
            H, W = self.feature_size
            if pooled_rows:
                cells = self._padded('cells', self.cell_lorow, self.h,
                                     self.w, self.zero_row)
            else:  # the top-left pixel's row of every cell
                cells = self._padded(
                    'cells_topleft', lambda: self.pix_row[self._top_left(
                        torch.arange(self.n * self.h * self.w,
                                     device=self.mask.device))],
                    self.h, self.w, self.zero_row)
            pixels = self._padded('pixels', self.pix_row, H, W,
                                  self.zero_row)
            low = self._anchors('low', *self.low_nij, self.h, self.w)
            dl = max(dilation // 2, 1)
            lo = cells[low + self._taps_into(dl, self.h, self.w)]
            hi = pixels[self._high_anchors() +
                        self._taps_into(dilation, H, W)]
            self._cache[key] = torch.cat([lo, hi]).view(-1)
        return self._cache[key]

    def entrance_index(self, dilation: int) -> Tensor:
        """(R, 9) raster pixels of a full-resolution map read by the
        stage-entrance conv (N*H*W, one past the map, for the zero row):
        dilation ``dilation`` at high pixels, stride 2 and dilation
        ``max(dilation // 2, 1)`` at low cells (anchored at the cell's
        top-left pixel)."""
        self._require_sparse()
        key = ('entrance', dilation)
        if key not in self._cache:
            H, W = self.feature_size
            zero = self.n * H * W
            raster = self._padded(
                'raster', torch.arange(zero, device=self.mask.device), H, W,
                zero)
            n, i, j = self.low_nij
            low = self._anchors('low_topleft', n, 2 * i, 2 * j, H, W)
            dl = max(dilation // 2, 1)
            self._cache[key] = torch.cat([
                raster[low + self._taps_into(dl, H, W)],
                raster[self._high_anchors() +
                       self._taps_into(dilation, H, W)]]).view(-1)
        return self._cache[key]

    def high_pixels(self) -> Tensor:
        """(4K,) raster index of the high pixels, in row order."""
        self._require_sparse()
        return self._high_pixels
