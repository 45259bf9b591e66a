"""Selective layers on :class:`MixedFeature` (DESIGN §3): the public tier.

One public function per layer; both executions compute the same function
(I3). Each checks its arguments, runs the dense emulation itself, and for
sparse execution builds the gather source and index table (or takes the
uniform path) and calls :mod:`mmselds.ops.kernels`, which dispatches the
compute (gather -> matmul over the active rows) to the backend of the
tensor's device type and dtype.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import kernels
from .amp import amp_dtype, autocast_operands
from .feature import MixedFeature, blend, to_rows
# Re-exported for callers that import them from here (e.g. release_workspace
# in mmselds.analysis.timing); they live in mmselds.ops.kernels.
from .kernels import gather_linear, release_workspace, rows_linear  # noqa
from .mask import CellMask
from .pooling import PoolSpec, SelectivePooling, as_pooling
from .versions import version

# sparse execution folds BatchNorm into its running statistics
SPARSE_TRAINING = (
    'sparse execution applies BatchNorm with running statistics only: '
    "train with execution='auto' (dense emulation in training, sparse in "
    "evaluation) or 'dense', or freeze the norm layers (norm_eval=True)")


class SparseTrainingError(RuntimeError):
    """Sparse execution asked to train BatchNorm statistics."""


def low_res_dilation(dilation: int) -> int:
    """Dilation of the OS16 conv standing for an OS8 conv of ``dilation``."""
    return max(dilation // 2, 1)


def _check_conv_args(x: Union[Tensor, MixedFeature], weight: Tensor,
                     bias: Optional[Tensor], dilation: int) -> int:
    """Validate a conv call on a dense map or a mixed feature (whose data
    is not read: a sparse concatenation stays in blocks); return the kernel
    size."""
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError('weight must be a (C_out, C_in, k, k) tensor')
    c_out, c_in, kh, kw = weight.shape
    if kh != kw or kh not in (1, 3):
        raise ValueError(f'kernel size {kh}x{kw} is not supported; '
                         'selective convs take 1x1 or 3x3 kernels')
    channels = x.channels if isinstance(x, MixedFeature) else x.shape[1]
    if c_in != channels:
        raise ValueError(f'weight expects {c_in} input channels but the '
                         f'feature has {channels} (groups must be 1)')
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f'dilation must be a positive int, got {dilation!r}')
    if kh == 3 and dilation > 1 and dilation % 2:
        raise ValueError(f'dilation {dilation} is not supported: an OS8 '
                         'dilation > 1 must be even so that the OS16 conv '
                         'has dilation r/2')
    amp = amp_dtype(x) is not None  # autocast casts the operands
    for name, t in (('weight', weight), ('bias', bias)):
        if t is None:
            continue
        if t.device != x.device or not (amp or t.dtype == x.dtype):
            raise ValueError(f'{name} is {t.dtype} on {t.device} but the '
                             f'feature is {x.dtype} on {x.device}')
    if bias is not None and bias.shape != (c_out, ):
        raise ValueError(f'bias must have shape ({c_out},), '
                         f'got {tuple(bias.shape)}')
    return kh


def _source(feat: MixedFeature, pool: SelectivePooling) -> Tensor:
    """Rows the gather of a sparse 3x3 conv reads under a mixed mask (a
    uniform one takes :func:`_uniform_conv2d`) with a pooling other than
    ``stride`` (whose low values are rows of the feature, read in place):
    cat([rows, zero, pooled high cells]).

    Without autograd the source is kept on the feature while its data is
    unchanged (same storage and version) and reused by the next 3x3 conv
    on the same feature with the same pooling: the ASPP head's parallel
    branches build it once instead of once each."""
    data = feat.data
    key = (pool.mode, data.data_ptr(), version(data)) + (
        (id(pool), version(pool.logits)) if pool.mode == 'adaptive' else ())
    keep = not (torch.is_grad_enabled() and data.requires_grad) and \
        None not in key  # (an inference tensor: nothing is kept)
    kept = feat.__dict__.get('_source')
    if keep and kept is not None and kept[0] == key:
        return kept[1]
    zero = data.new_zeros(1, feat.channels)
    src = torch.cat([data, zero, feat.pooled_rows(pool)])
    if keep:
        feat.__dict__['_source'] = (key, src)
    return src


def _uniform_conv2d(x: Tensor, cells: CellMask, weight: Tensor,
                    bias: Optional[Tensor], r: int, rl: int,
                    epilogue: dict) -> Optional[Tensor]:
    """The sparse 3x3 conv when every cell has the same resolution, else
    None: the one uniform path, taken by :func:`selective_conv2d` and
    :func:`selective_entrance_conv2d`.

    With no low cell the output rows are the NHWC full-resolution map, with
    no high cell the NHWC OS16 map (row order of :class:`CellMask`), so the
    conv is one dense conv (dilation r at full resolution, rl at OS16): no
    gather, no index table and no im2col buffer, so the selective machinery
    costs nothing when nothing is selected.

    Args:
        x (Tensor): sparse rows (R, C), which under a uniform mask are the
            NHWC map at the cells' resolution (read as a channels-last
            view), or the (N, C, H, W) full-resolution input of the
            entrance, whose low cells take the stride-2 conv of the OS16
            network.
    """
    rows = x.dim() == 2
    if cells.num_low == 0:
        size, d, stride = cells.feature_size, r, 1
    elif cells.num_high == 0:  # rows at OS16; the entrance's input at OS8
        size, d, stride = (cells.h, cells.w), rl, 1 if rows else 2
    else:
        return None
    if rows:
        x = x.view(cells.n, *size, x.shape[1]).permute(0, 3, 1, 2)
    return kernels.conv2d_rows(x, weight, bias, d, stride, **epilogue)


def _epilogue(cells: CellMask, residual: Optional[MixedFeature],
              relu: bool) -> dict:
    """Check the epilogue of a conv; the kernels' arguments for it."""
    if residual is not None:
        if not isinstance(residual, MixedFeature):
            raise ValueError('residual must be a MixedFeature, got '
                             f'{type(residual).__name__}')
        if residual.cells is not cells:
            raise ValueError('residual must be under the same CellMask as '
                             'the conv')
    return dict(residual=None if residual is None else residual.data,
                relu=bool(relu))


def _dense_epilogue(out: Tensor, epilogue: dict) -> Tensor:
    if epilogue['residual'] is not None:
        out = out + epilogue['residual']
    return out.relu() if epilogue['relu'] else out


def selective_conv2d(feat: MixedFeature, weight: Tensor,
                     bias: Optional[Tensor] = None, dilation: int = 1,
                     pool: Optional[PoolSpec] = None, *,
                     residual: Optional[MixedFeature] = None,
                     relu: bool = False) -> MixedFeature:
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
        residual (MixedFeature, optional): (N, C_out, H, W) under the same
            cells, added to the output (a residual block's shortcut).
        relu (bool): apply a ReLU after the add. Default: False.
    Returns:
        MixedFeature: (N, C_out, H, W) output under the same cells,
        ``relu?(conv(feat) + residual?)``; sparse kernels may fuse the
        epilogue.
    """
    if not isinstance(feat, MixedFeature):
        raise ValueError('selective_conv2d takes a MixedFeature; build one '
                         'with MixedFeature.from_dense')
    k = _check_conv_args(feat, weight, bias, dilation)
    # as autocast casts F.conv2d's operands: dense emulation, the sparse
    # kernels and the fused epilogue all compute in the autocast dtype
    feat, weight, bias, residual = autocast_operands(feat, weight, bias,
                                                     residual)
    pool = feat.pool if pool is None else as_pooling(pool)
    epilogue = _epilogue(feat.cells, residual, relu)
    if k == 1:
        if feat.execution == 'dense':
            return feat.new(_dense_epilogue(
                F.conv2d(feat.data, weight, bias), epilogue), pool)
        return feat.new(kernels.rows_linear(feat.data, weight.flatten(1),
                                            bias, **epilogue), pool)
    r, rl = dilation, low_res_dilation(dilation)
    if feat.execution == 'dense':
        v = feat.data
        hi = F.conv2d(v, weight, bias, padding=r, dilation=r)
        lo = F.conv2d(pool(v), weight, bias, padding=rl, dilation=rl)
        return feat.new(_dense_epilogue(blend(hi, lo, feat.cells.mask),
                                        epilogue), pool)
    cells = feat.cells
    if not (cells.num_low and cells.num_high):  # one resolution
        out = _uniform_conv2d(feat.data, cells, weight, bias, r, rl,
                              epilogue)
    elif pool.mode == 'stride':  # low values read in place: no source
        blocks = feat.row_blocks()
        out = kernels.gather_linear(
            blocks[0] if len(blocks) == 1 else blocks,
            cells.conv_index(r, pooled_rows=False), weight, bias, **epilogue)
    else:
        out = kernels.gather_linear(_source(feat, pool), cells.conv_index(r),
                                    weight, bias, **epilogue)
    return feat.new(out, pool)


def selective_entrance_conv2d(x: Tensor, cells: CellMask, weight: Tensor,
                              bias: Optional[Tensor] = None,
                              dilation: int = 1,
                              pool: PoolSpec = 'stride', *,
                              relu: bool = False) -> MixedFeature:
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
        relu (bool): apply a ReLU to the output. Default: False.
    Returns:
        MixedFeature: (N, C_out, H, W).
    """
    cells.check_feature(x, 'input')
    if _check_conv_args(x, weight, bias, dilation) != 3:
        raise ValueError('the entrance conv takes a 3x3 kernel')
    x, weight, bias = autocast_operands(x, weight, bias)
    r, rl = dilation, low_res_dilation(dilation)
    epilogue = _epilogue(cells, None, relu)
    if cells.execution == 'dense':
        hi = F.conv2d(x, weight, bias, padding=r, dilation=r)
        lo = F.conv2d(x, weight, bias, stride=2, padding=rl, dilation=rl)
        return MixedFeature(_dense_epilogue(blend(hi, lo, cells.mask),
                                            epilogue), cells, pool)
    out = _uniform_conv2d(x, cells, weight, bias, r, rl, epilogue)
    if out is None:
        # (the index's zero row is N * H * W, one past the raster rows)
        out = kernels.gather_linear(to_rows(x), cells.entrance_index(r),
                                    weight, bias, **epilogue)
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
        raise SparseTrainingError(SPARSE_TRAINING)
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
