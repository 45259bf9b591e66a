"""Selective layers on :class:`MixedFeature` (DESIGN §3).

One public function per layer; both executions compute the same function
(I3). The sparse path is gather -> matmul over the active rows only, in pure
PyTorch; it is the reference for any faster kernel.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .feature import MixedFeature, blend, to_rows
from .mask import CellMask
from .pooling import PoolSpec, SelectivePooling, as_pooling

# Smallest matmul (multiply-adds) that rows_linear hands to oneDNN on the CPU.
_ONEDNN_MACS = 10**8

# Largest im2col block gathered at once by the sparse 3x3 conv: larger
# blocks are a little faster, smaller ones lower the peak memory.
_GATHER_BYTES = 80 * 2**20


def low_res_dilation(dilation: int) -> int:
    """Dilation of the OS16 conv standing for an OS8 conv of ``dilation``."""
    return max(dilation // 2, 1)


def _check_conv_args(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                     dilation: int) -> int:
    """Validate a conv call; return the kernel size."""
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError('weight must be a (C_out, C_in, k, k) tensor')
    c_out, c_in, kh, kw = weight.shape
    if kh != kw or kh not in (1, 3):
        raise ValueError(f'kernel size {kh}x{kw} is not supported; '
                         'selective convs take 1x1 or 3x3 kernels')
    if c_in != x.shape[1]:
        raise ValueError(f'weight expects {c_in} input channels but the '
                         f'feature has {x.shape[1]} (groups must be 1)')
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f'dilation must be a positive int, got {dilation!r}')
    if kh == 3 and dilation > 1 and dilation % 2:
        raise ValueError(f'dilation {dilation} is not supported: an OS8 '
                         'dilation > 1 must be even so that the OS16 conv '
                         'has dilation r/2')
    for name, t in (('weight', weight), ('bias', bias)):
        if t is None:
            continue
        if t.device != x.device or t.dtype != x.dtype:
            raise ValueError(f'{name} is {t.dtype} on {t.device} but the '
                             f'feature is {x.dtype} on {x.device}')
    if bias is not None and bias.shape != (c_out, ):
        raise ValueError(f'bias must have shape ({c_out},), '
                         f'got {tuple(bias.shape)}')
    return kh


def rows_linear(rows: Tensor, weight: Tensor,
                bias: Optional[Tensor] = None) -> Tensor:
    """(M, K) @ (C_out, K)^T + bias -> (M, C_out): the matmul of every
    sparse layer, dispatched on the device here only.

    On the CPU a 1x1 convolution over channels-last rows runs oneDNN's
    kernels, ~1.4x faster than ``torch.mm`` (MKL) on the build machines for
    large products; below ``_ONEDNN_MACS`` multiply-adds oneDNN's fixed
    cost (~0.15 ms a call) makes ``torch.mm`` faster.
    """
    M, K = rows.shape
    if rows.device.type != 'cpu' or M * K * weight.shape[0] < _ONEDNN_MACS:
        return F.linear(rows, weight, bias)
    out = F.conv2d(rows.view(1, 1, M, K).permute(0, 3, 1, 2),
                   weight.view(-1, K, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(M, -1)


# Reused im2col buffers of inference (no autograd), one per device and
# dtype: a fresh buffer of this size costs more in page faults than the
# gather itself on the CPU.
_WORKSPACE = {}


def _workspace(numel: int, like: Tensor) -> Tensor:
    key = (like.device, like.dtype)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < numel:
        buf = _WORKSPACE[key] = like.new_empty(numel)
    return buf[:numel]


def gather_linear(src: Tensor, index: Tensor, weight: Tensor,
                  bias: Optional[Tensor] = None) -> Tensor:
    """Sparse convolution: row r of the output is
    ``sum_t src[index[r, t]] @ W_t + bias``.

    Args:
        src (Tensor): (M, C) source rows.
        index (Tensor): (R * T,) flat (R, T) rows of ``src`` per tap.
        weight (Tensor): (C_out, C, k, k) with T = k * k taps, row-major.
    Returns:
        Tensor: (R, C_out).
    """
    c_out, c_in = weight.shape[:2]
    taps = weight.shape[2] * weight.shape[3]
    w2d = weight.permute(0, 2, 3, 1).reshape(c_out, taps * c_in)
    R = index.numel() // taps
    if R == 0:
        return src.new_zeros(0, c_out)
    row_bytes = taps * c_in * src.element_size()
    blocks = -(-R * row_bytes // _GATHER_BYTES)
    block = -(-R // blocks)
    grad = torch.is_grad_enabled() and (src.requires_grad
                                        or weight.requires_grad)
    outs = []
    for start in range(0, R, block):
        idx = index[start * taps:(start + block) * taps]
        if grad:
            cols = src.index_select(0, idx)
        else:
            cols = torch.index_select(
                src, 0, idx, out=_workspace(idx.numel() * c_in, src).view(
                    idx.numel(), c_in))
        outs.append(rows_linear(cols.view(-1, taps * c_in), w2d, bias))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def release_workspace() -> None:
    """Free the cached im2col buffers of sparse inference."""
    _WORKSPACE.clear()


def _source(feat: MixedFeature, pool: SelectivePooling) -> Tensor:
    """Rows the gather of a sparse 3x3 conv reads under a mixed mask (a
    uniform one takes :func:`_uniform_conv2d`): cat([rows, zero, pooled
    high cells])."""
    zero = feat.data.new_zeros(1, feat.channels)
    return torch.cat([feat.data, zero, feat.pooled_rows(pool)])


def _uniform_conv2d(rows: Tensor, cells: CellMask, weight: Tensor,
                    bias: Optional[Tensor], r: int, rl: int
                    ) -> Optional[Tensor]:
    """Sparse 3x3 conv when every cell has the same resolution, else None.

    With no low cell the rows are the NHWC full-resolution map, with no
    high cell the NHWC OS16 map (row order of :class:`CellMask`), so the
    conv is one dense conv (dilation r, or rl at OS16) on a channels-last
    view: no gather and no im2col buffer, so the selective machinery costs
    nothing when nothing is selected.
    """
    N, h, w = cells.n, cells.h, cells.w
    if cells.num_low == 0:
        h, w, d = 2 * h, 2 * w, r
    elif cells.num_high == 0:
        d = rl
    else:
        return None
    x = rows.view(N, h, w, rows.shape[1]).permute(0, 3, 1, 2)
    return to_rows(F.conv2d(x, weight, bias, padding=d, dilation=d))


def selective_conv2d(feat: MixedFeature, weight: Tensor,
                     bias: Optional[Tensor] = None, dilation: int = 1,
                     pool: Optional[PoolSpec] = None) -> MixedFeature:
    """k x k conv (k = 1 or 3, stride 1, groups 1) on a mixed feature.

    High-res output at pixel p (M = 0): ``sum_t W_t V(p + r t)`` with V the
    densified input; low-res output at cell c (M = 1): the OS16 conv of
    ``lo`` with dilation ``max(r / 2, 1)``. Zero padding outside the map.

    Args:
        feat (MixedFeature): (N, C_in, H, W) input.
        weight (Tensor): (C_out, C_in, k, k), shared by both resolutions.
        bias (Tensor, optional): (C_out,). Default: None.
        dilation (int): OS8 dilation r: 1 or even. Default: 1.
        pool (str | SelectivePooling, optional): pooling that forms the
            low-resolution value of full-resolution cells read by low
            cells; also the output's pooling. Default: ``feat.pool``.
    Returns:
        MixedFeature: (N, C_out, H, W) output under the same cells.
    """
    if not isinstance(feat, MixedFeature):
        raise ValueError('selective_conv2d takes a MixedFeature; build one '
                         'with MixedFeature.from_dense')
    k = _check_conv_args(feat.data, weight, bias, dilation)
    pool = feat.pool if pool is None else as_pooling(pool)
    if k == 1:
        if feat.execution == 'dense':
            return feat.new(F.conv2d(feat.data, weight, bias), pool)
        return feat.new(rows_linear(feat.data, weight.flatten(1), bias), pool)
    r, rl = dilation, low_res_dilation(dilation)
    if feat.execution == 'dense':
        v = feat.data
        hi = F.conv2d(v, weight, bias, padding=r, dilation=r)
        lo = F.conv2d(pool(v), weight, bias, padding=rl, dilation=rl)
        return feat.new(blend(hi, lo, feat.cells.mask), pool)
    cells = feat.cells
    out = _uniform_conv2d(feat.data, cells, weight, bias, r, rl)
    if out is None:
        out = gather_linear(_source(feat, pool), cells.conv_index(r), weight,
                            bias)
    return feat.new(out, pool)


def selective_entrance_conv2d(x: Tensor, cells: CellMask, weight: Tensor,
                              bias: Optional[Tensor] = None,
                              dilation: int = 1,
                              pool: PoolSpec = 'stride') -> MixedFeature:
    """The stage entrance (OS8 -> OS16 transition) with ``stride`` pooling.

    Full-resolution cells get the 3x3 conv of dilation r on ``x`` (which is
    valid everywhere); down-sampled cells get exactly what the OS16 network
    computes: the stride-2 conv with dilation ``max(r / 2, 1)``, padding
    included, evaluated at the cell.

    Args:
        x (Tensor): (N, C_in, H, W) full-resolution input.
        cells (CellMask): the selection of the output.
        weight (Tensor): (C_out, C_in, 3, 3).
        bias (Tensor, optional): (C_out,). Default: None.
        dilation (int): the OS8 dilation r: 1 or even. Default: 1.
        pool (str | SelectivePooling): the output's pooling.
            Default: ``'stride'``.
    Returns:
        MixedFeature: (N, C_out, H, W).
    """
    cells.check_feature(x, 'input')
    if _check_conv_args(x, weight, bias, dilation) != 3:
        raise ValueError('the entrance conv takes a 3x3 kernel')
    r, rl = dilation, low_res_dilation(dilation)
    if cells.execution == 'dense':
        hi = F.conv2d(x, weight, bias, padding=r, dilation=r)
        lo = F.conv2d(x, weight, bias, stride=2, padding=rl, dilation=rl)
        return MixedFeature(blend(hi, lo, cells.mask), cells, pool)
    if cells.num_low == 0:  # the rows of the OS8 conv (see _uniform_conv2d)
        out = to_rows(F.conv2d(x, weight, bias, padding=r, dilation=r))
    elif cells.num_high == 0:  # the rows of the OS16 stride-2 conv
        out = to_rows(F.conv2d(x, weight, bias, stride=2, padding=rl,
                               dilation=rl))
    else:
        src = torch.cat([to_rows(x), x.new_zeros(1, x.shape[1])])
        out = gather_linear(src, cells.entrance_index(r), weight, bias)
    return MixedFeature(out, cells, pool)


def batch_norm_affine(bn: _BatchNorm) -> Tuple[Tensor, Tensor]:
    """(scale, shift) of a BatchNorm with running statistics (eval)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return scale, shift


def fold_batch_norm(weight: Tensor, bias: Optional[Tensor],
                    bn: _BatchNorm) -> Tuple[Tensor, Tensor]:
    """Weights of ``bn(conv(x))`` as one conv, BatchNorm with running
    statistics (eval): ``W * scale``, ``(b - mean) * scale + beta``."""
    scale, shift = batch_norm_affine(bn)
    folded = weight * scale.view(-1, 1, 1, 1)
    return folded, shift if bias is None else shift + bias * scale


def selective_batch_norm(feat: MixedFeature, bn: _BatchNorm) -> MixedFeature:
    """Apply a BatchNorm module (BN or SyncBN) to a mixed feature.

    Dense execution calls the module on V, so training-mode statistics are
    those of the densified map (a down-sampled cell counts as its 4 pixels),
    and SyncBN synchronises them as usual. Sparse execution applies the
    eval-mode affine map and refuses training-mode statistics.
    """
    if feat.execution == 'dense':
        return feat.new(bn(feat.data))
    if bn.training or bn.running_mean is None:
        raise RuntimeError(
            'sparse execution applies BatchNorm with running statistics '
            'only: put the norm layers in eval mode (or norm_eval=True), or '
            'use execution="dense" for training')
    scale, shift = batch_norm_affine(bn)
    return feat.new(torch.addcmul(shift, feat.data, scale))


def selective_apply(feat: MixedFeature, module: nn.Module) -> MixedFeature:
    """Apply a point-wise module (1x1 conv, BatchNorm, ReLU, Identity, or a
    Sequential of these) to a mixed feature."""
    if isinstance(module, nn.Sequential):
        for m in module:
            feat = selective_apply(feat, m)
        return feat
    if isinstance(module, nn.Identity):
        return feat
    if isinstance(module, nn.ReLU):
        return feat.relu_() if module.inplace else feat.relu()
    if isinstance(module, _BatchNorm):
        return selective_batch_norm(feat, module)
    if isinstance(module, nn.Conv2d):
        if module.kernel_size != (1, 1) or module.stride != (1, 1) \
                or module.groups != 1 or module.padding not in ((0, 0), 0):
            raise ValueError(f'selective_apply takes point-wise convs only '
                             f'(1x1, stride 1, groups 1), got {module}')
        return selective_conv2d(feat, module.weight, module.bias)
    raise NotImplementedError(
        f'{type(module).__name__} is not a point-wise module that a mixed '
        'feature supports (Conv2d 1x1, BatchNorm, ReLU, Identity, Sequential)')
