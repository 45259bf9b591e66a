"""The selective-layer runner: a sequence of layers on a mixed feature.

One place applies layers to a :class:`MixedFeature` and counts their
multiply-adds; the backbone's residual blocks and the selective ASPP head
both use it. Layers it takes:

* ``nn.Conv2d``: 1x1, or 3x3 with padding = dilation; stride 1, groups 1,
  zero padding (a selective conv, DESIGN §3);
* mmcv's ``ConvModule`` in the order conv -> norm -> act (recognised by its
  attributes, so this module imports torch only);
* BatchNorm (any ``_BatchNorm``; SyncBN included), ``nn.ReLU`` and other
  element-wise activations, ``nn.Identity``, dropout (dense emulation
  only in training), and ``nn.Sequential`` of these.

In sparse execution an eval-mode BatchNorm right after a conv is folded
into it (one pass over the rows less). The residual add
(:meth:`MixedFeature.add_relu_`), the channel concatenation
(:func:`~mmselds.ops.mixed_cat`) and the global average pooling
(:func:`~mmselds.ops.mixed_global_avg_pool`) combine the results of runs;
:func:`run_aspp` combines them into an ASPP block (the selective head's, and
the GPU benchmark's plain-torch head).

Pooling: a 3x3 conv under a mixed mask pools the full-resolution cells its
down-sampled cells read; ``pool_for(conv)`` gives that pooling (None keeps
the feature's own). A point-wise layer never pools.
"""
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import kernels
from .combine import mixed_broadcast, mixed_cat, mixed_global_avg_pool
from .feature import MixedFeature
from .functional import (fold_batch_norm, selective_apply, selective_conv2d,
                         selective_entrance_conv2d)
from .mask import CellMask
from .pooling import PoolSpec, SelectivePooling
from .versions import version

PoolFor = Callable[[nn.Conv2d], Optional[PoolSpec]]
DROPOUTS = (nn.Dropout, nn.Dropout2d)
# element-wise activations (per value, or per channel: PReLU), which act on
# the rows of sparse execution as on the dense map
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU,
               nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
               nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus)
# mmcv's element-wise activations (mmcv.cnn.bricks; not imported here)
MMCV_ACTIVATIONS = ('Swish', 'HSwish', 'HSigmoid', 'Clamp')
# layers that are not a ConvModule, recognised without probing attributes
PLAIN_LAYERS = (nn.Conv2d, _BatchNorm, nn.ReLU, nn.Identity) + DROPOUTS


def is_conv_module(module: nn.Module) -> bool:
    """An mmcv ``ConvModule`` (or a module with its interface)."""
    return all(hasattr(module, a) for a in
               ('conv', 'order', 'with_norm', 'with_activation'))


def _check_conv(conv: nn.Module) -> None:
    if type(conv) is not nn.Conv2d:
        raise NotImplementedError(f'selective layers take a plain nn.Conv2d,'
                                  f' got {type(conv).__name__}')
    k, d = conv.kernel_size[0], conv.dilation[0]
    pad = 0 if k == 1 else d
    if k not in (1, 3) or conv.kernel_size != (k, k) \
            or conv.stride != (1, 1) or conv.groups != 1 \
            or conv.padding != (pad, pad) or conv.dilation != (d, d) \
            or conv.padding_mode != 'zeros':
        raise NotImplementedError(
            'selective convs take 1x1 or 3x3 kernels with stride 1, groups 1'
            f' and zero padding = dilation, got {conv}')


def flatten_layers(layers: Iterable[nn.Module]) -> List[nn.Module]:
    """The plain layers of ``layers``, in order: ``nn.Sequential`` and
    ``ConvModule`` (conv -> norm -> act) expanded, ``nn.Identity`` dropped;
    every conv checked."""
    out: List[nn.Module] = []
    for m in layers:
        if isinstance(m, nn.Sequential):
            out += flatten_layers(m)
        elif isinstance(m, PLAIN_LAYERS):  # (no attribute probes: faster)
            if isinstance(m, nn.Conv2d):
                _check_conv(m)
            if not isinstance(m, nn.Identity):
                out.append(m)
        elif is_conv_module(m):
            if tuple(m.order) != ('conv', 'norm', 'act'):
                raise NotImplementedError(
                    "selective ConvModules take the order ('conv', 'norm', "
                    f"'act'), got {m.order}")
            if getattr(m, 'with_explicit_padding', False):
                raise NotImplementedError('selective ConvModules take zero '
                                          'padding inside the conv')
            norm = m.norm if m.with_norm else None
            if norm is not None and not isinstance(norm, _BatchNorm):
                raise NotImplementedError(
                    'selective ConvModules take BatchNorm norms, got '
                    f'{type(norm).__name__}')
            out += flatten_layers([m.conv] + ([norm] if norm is not None else
                                              []) +
                                  ([m.activate] if m.with_activation else []))
        elif isinstance(m, ACTIVATIONS) or (
                type(m).__name__ in MMCV_ACTIVATIONS
                and type(m).__module__.startswith('mmcv.')):
            out.append(m)
        else:
            raise NotImplementedError(
                f'selective layers take convs, BatchNorm, dropout and '
                f'element-wise activations; {type(m).__name__} is none of '
                'them (its result on the sparse rows would differ from the '
                'dense map)')
    return out


def _is_3x3(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)


def _key(tensors) -> Optional[tuple]:
    """Storage, version, dtype and device of ``tensors``; None when one
    has no version (an inference tensor: nothing is kept)."""
    key = []
    for t in tensors:
        if t is None:
            key.append(None)
            continue
        v = version(t)
        if v is None:
            return None
        key.append((t.data_ptr(), v, t.dtype, t.device))
    return tuple(key)


def _tensor(module: nn.Module, name: str) -> Optional[Tensor]:
    """``getattr(module, name)`` for a parameter or buffer, read from the
    module's dicts: ``nn.Module.__getattr__`` costs ~1 us a lookup, which
    the host pays for each conv of a sparse pass (a GPU's small inputs wait
    for it). Anything else (a parametrized weight) goes through getattr."""
    if name in module._parameters:
        return module._parameters[name]
    if name in module._buffers:
        return module._buffers[name]
    return getattr(module, name)


def _check_finite(weight: Tensor, bias: Optional[Tensor], conv: nn.Conv2d,
                  norm: Optional[_BatchNorm]) -> None:
    """Sparse inference fuses ReLU into oneDNN's conv, which maps NaN to 0:
    a non-finite weight or statistic would give finite, wrong outputs
    (the dense network gives NaN), so it is named here instead."""
    finite = torch.isfinite(weight).all()
    if bias is not None:
        finite &= torch.isfinite(bias).all()
    if bool(finite):  # one host read a fold
        return
    what = f'{type(conv).__name__}{tuple(conv.weight.shape)}'
    if norm is not None:
        what += f' with its folded {type(norm).__name__}'
    raise FloatingPointError(
        f'{what} has NaN or Inf in its weights' +
        (' or BatchNorm statistics' if norm is not None else '') +
        ' (a diverged or corrupt checkpoint?); selective inference refuses '
        'to run it')


def sparse_weights(conv: nn.Conv2d, norm: Optional[_BatchNorm] = None
                   ) -> Tuple[Tensor, Optional[Tensor]]:
    """(weight, bias) of ``conv`` for sparse execution, with an eval-mode
    BatchNorm ``norm`` folded in, the weight in channels-last memory (the
    (C_out, k, k, C_in) layout the gather's matmul reads, so no copy per
    call).

    Without autograd (inference) the result is kept on the conv and reused
    while the parameters and statistics involved are unchanged (same
    storage, same version: an autograd optimiser step, ``load_state_dict``
    or ``.to()`` makes a new one); this keeps one folded copy of the weights
    of each selective conv, and :func:`clear_sparse_weights` drops them.
    Changes that keep the version (fused optimisers, BatchNorm statistics
    of training forwards, writes through ``.data``) are not seen here: the
    selective backbone and head drop their copies on every ``train()`` /
    ``eval()``, as mmengine's loops switch modes around validation; after
    editing weights through ``.data`` in eval mode, call
    :func:`clear_sparse_weights`. A non-finite folded weight raises
    ``FloatingPointError``.
    """
    tensors = [_tensor(conv, 'weight'), _tensor(conv, 'bias')]
    if norm is not None:
        tensors += [_tensor(norm, n) for n in
                    ('weight', 'bias', 'running_mean', 'running_var')]
    cache = not torch.is_grad_enabled() or not any(
        t is not None and t.requires_grad for t in tensors)
    versions = _key(tensors) if cache else None
    cache = versions is not None
    key = (versions, None if norm is None else norm.eps)
    hit = conv.__dict__.get('_sparse_weights')
    if cache and hit is not None and hit[0] == key:
        return hit[1], hit[2]
    weight, bias = tensors[:2]
    if norm is not None:
        weight, bias = fold_batch_norm(weight, bias, norm)
    weight = weight.contiguous(memory_format=torch.channels_last)
    _check_finite(weight, bias, conv, norm)
    if cache:
        conv.__dict__['_sparse_weights'] = (key, weight, bias)
    return weight, bias


def clear_sparse_weights(module: nn.Module) -> None:
    """Drop the folded weights :func:`sparse_weights` keeps on the convs of
    ``module``."""
    for m in module.modules():
        m.__dict__.pop('_sparse_weights', None)


def run_layers(x: Union[MixedFeature, Tensor], layers: Iterable[nn.Module],
               pool_for: Optional[PoolFor] = None,
               cells: Optional[CellMask] = None,
               shortcut: Optional[MixedFeature] = None) -> MixedFeature:
    """Apply ``layers`` in order to a mixed feature.

    A ReLU right after a conv (after its folded BatchNorm in sparse
    inference) and the end of a residual block (``shortcut``) are the
    conv's epilogue, which the sparse kernels may fuse.

    Args:
        x (MixedFeature | Tensor): the input; a dense (N, C, H, W) tensor is
            the full-resolution map at a stage entrance with ``stride``
            pooling: the layers up to the first 3x3 conv run on it as plain
            modules, and that conv is the selective entrance conv (low cells
            get the OS16 network's stride-2 conv).
        layers (Iterable[nn.Module]): see the module docstring.
        pool_for (callable, optional): ``conv -> pooling`` of a 3x3 conv
            (None keeps the feature's pooling). Default: keep it everywhere.
        cells (CellMask, optional): the selection; required for a dense
            ``x``.
        shortcut (MixedFeature, optional): return
            ``relu(layers(x) + shortcut)``, a residual block's end.
    Returns:
        MixedFeature: the output.
    """
    layers = flatten_layers(layers)
    if isinstance(x, Tensor) and cells is None:
        raise ValueError('run_layers on a dense map (the stage entrance) '
                         'needs cells')
    execution = cells.execution if isinstance(x, Tensor) else x.execution
    out = x
    i = 0
    while i < len(layers):
        m = layers[i]
        if isinstance(out, Tensor) and not _is_3x3(m):
            out = m(out)  # before the entrance conv: the dense map
        elif isinstance(m, nn.Conv2d):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            fold = execution == 'sparse' and isinstance(nxt, _BatchNorm) \
                and not nxt.training
            weight, bias = sparse_weights(m, nxt if fold else None) \
                if execution == 'sparse' else (m.weight, m.bias)
            i += fold
            # the epilogue: a ReLU next, or the block's end
            relu = i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU
            i += relu
            residual = shortcut if i + 1 == len(layers) and not relu \
                else None
            pool = pool_for(m) if pool_for is not None and _is_3x3(m) \
                else None
            if isinstance(out, Tensor):
                out = selective_entrance_conv2d(
                    out, cells, weight, bias, m.dilation[0],
                    pool='stride' if pool is None else pool, relu=relu)
            else:
                out = selective_conv2d(out, weight, bias, m.dilation[0],
                                       pool=pool, residual=residual,
                                       relu=relu or residual is not None)
            if residual is not None:
                shortcut = None  # done
        elif isinstance(m, DROPOUTS):
            if m.training and m.p > 0:
                if out.execution == 'sparse':
                    raise RuntimeError(
                        'dropout runs in dense emulation only: train with '
                        'execution="dense" (or "auto"), or put the module in'
                        ' eval mode')
                out = out.map(m)
        elif isinstance(m, (_BatchNorm, nn.ReLU)):
            out = selective_apply(out, m)
        else:  # an element-wise activation
            out = out.map(m)
        i += 1
    if isinstance(out, Tensor):
        raise ValueError('run_layers on a dense map needs a 3x3 conv (the '
                         'stage entrance) among the layers')
    return out if shortcut is None else out.add_relu_(shortcut)


def run_residual_block(x: Union[MixedFeature, Tensor],
                       main: Iterable[nn.Module],
                       downsample: Optional[nn.Module] = None,
                       cells: Optional[CellMask] = None,
                       entrance_pool: PoolSpec = 'stride',
                       pool_for: Optional[PoolFor] = None) -> MixedFeature:
    """A residual block, ``relu(main(x) + shortcut(x))``, on a mixed
    feature, its add and ReLU in the epilogue of ``main``'s last conv.

    Args:
        x (MixedFeature | Tensor): the input; a dense (N, C, H, W) tensor is
            the full-resolution map at the stage entrance, pooled with
            ``entrance_pool`` under ``cells`` (with ``stride`` pooling
            ``main`` runs on the dense map up to its 3x3 conv, whose low
            cells are the OS16 network's stride-2 conv; see
            :func:`run_layers`).
        main (Iterable[nn.Module]): the residual branch.
        downsample (nn.Module, optional): the shortcut's layers (None: the
            identity).
        cells (CellMask, optional): the selection; required for a dense
            ``x``.
        entrance_pool: the pooling of a dense ``x``.
        pool_for (callable, optional): as in :func:`run_layers`.
    Returns:
        MixedFeature: the block's output.
    """
    if isinstance(x, Tensor):
        if cells is None:
            raise ValueError('run_residual_block on a dense map (the stage '
                             'entrance) needs cells')
        inp = MixedFeature.from_dense(x, cells, entrance_pool)
        if not (isinstance(entrance_pool, str) and entrance_pool == 'stride'):
            x = inp
    else:
        inp = x
    shortcut = inp if downsample is None else run_layers(inp, [downsample])
    return run_layers(x, main, pool_for, cells, shortcut=shortcut)


def run_aspp(x: MixedFeature, image_pool: Optional[nn.Module],
             branches: Iterable[nn.Module], bottleneck: nn.Module
             ) -> MixedFeature:
    """Atrous spatial pyramid pooling on a mixed feature (DESIGN §7), as
    mmseg's ``ASPPHead`` computes it before its classifier.

    The image-pool branch averages the densified map over the image (a
    down-sampled cell weighs as its 4 pixels; sparse execution sums rows
    and never densifies), applies ``image_pool`` to the (N, C, 1, 1) means
    as a plain module and broadcasts the result to every position; each of
    ``branches`` runs through :func:`run_layers` (a 3x3 conv of rate r:
    rate r at full-resolution cells, r/2 at down-sampled ones); the results
    are concatenated along channels in that order (the image pool first)
    and ``bottleneck`` runs on them. A down-sampled cell that reads a
    full-resolution neighbour pools it with ``x``'s pooling, which must be
    parameter-free (``stride``, ``avg`` or ``max``: an ``adaptive``
    pooling is learned per channel of ``x`` and cannot pool the wider
    concatenation).

    Args:
        x (MixedFeature): the input feature.
        image_pool (nn.Module, optional): the layers after the global
            average pooling (mmseg: ``image_pool[1]``, a 1x1 ConvModule);
            None: no image-pool branch.
        branches (Iterable[nn.Module]): the parallel conv blocks.
        bottleneck (nn.Module): the layers on the concatenation.
    Returns:
        MixedFeature: the bottleneck's output, under ``x``'s cells.
    """
    if not isinstance(x, MixedFeature):
        raise ValueError('run_aspp takes a MixedFeature, got '
                         f'{type(x).__name__}')
    if x.pool.mode == 'adaptive':
        raise ValueError(
            "run_aspp needs a parameter-free pooling ('stride', 'avg' or "
            "'max'): the feature's 'adaptive' pooling is learned for its "
            f'{x.pool.channels} channels and cannot pool the concatenation '
            "(x.new(x.data, 'stride') re-pools it)")
    outs = []
    if image_pool is not None:
        pooled = image_pool(mixed_global_avg_pool(x))  # (N, C', 1, 1)
        outs.append(mixed_broadcast(pooled, x.cells, x.pool))
    outs += [run_layers(x, [m]) for m in branches]
    if not outs:
        raise ValueError('run_aspp needs an image pool or a branch')
    return run_layers(mixed_cat(outs), [bottleneck])


def dense_layers(x: Tensor, layers: Iterable[nn.Module],
                 shortcut: Optional[Tensor] = None) -> Tensor:
    """Apply plain layers to a dense (N, C, H, W) map, each conv followed by
    an eval-mode BatchNorm as one conv with the folded weights of
    :func:`sparse_weights`, a ReLU after it and the ``shortcut`` add of a
    residual block's end (``relu(layers(x) + shortcut)``) in the conv's
    epilogue (:func:`~mmselds.ops.kernels.conv2d`): how sparse inference
    runs the dense part of a network (the stem and stages 1-2 of the
    backbone), with the outputs of the modules themselves up to round-off.
    Any conv (stride, padding, groups) is allowed; other modules are called
    as they are."""
    mods = [m for m in _expand(layers) if not isinstance(m, nn.Identity)]
    i = 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if type(m) is nn.Conv2d and m.padding_mode == 'zeros':
            fold = isinstance(nxt, _BatchNorm) and not nxt.training
            weight, bias = sparse_weights(m, nxt if fold else None)
            i += fold
            relu = i + 1 < len(mods) and type(mods[i + 1]) is nn.ReLU
            i += relu
            residual = shortcut if i + 1 == len(mods) and not relu \
                else None
            x = kernels.conv2d(x, weight, bias, m.stride, m.padding,
                               m.dilation, m.groups, residual=residual,
                               relu=relu or residual is not None)
            if residual is not None:
                shortcut = None
        else:
            x = m(x)
        i += 1
    if shortcut is not None:
        x = (x + shortcut).relu_()
    return x


def _expand(layers: Iterable[nn.Module]) -> List[nn.Module]:
    out: List[nn.Module] = []
    for m in layers:
        out += _expand(m) if isinstance(m, nn.Sequential) else [m]
    return out


def pooling_macs_per_value(pool: Optional[PoolSpec]) -> int:
    """Multiply-adds counted per pooled value: 4 for ``avg`` and
    ``adaptive`` pooling, 0 for ``stride`` and ``max``."""
    mode = pool.mode if isinstance(pool, SelectivePooling) else pool
    return 4 if mode in ('avg', 'adaptive') else 0


def layers_macs(layers: Iterable[nn.Module], full_px: float, low: float,
                pool_for: Optional[PoolFor] = None,
                dense_entrance: bool = False,
                feature_pool: Optional[PoolSpec] = None) -> Dict[str, float]:
    """Multiply-adds of :func:`run_layers` over the same layers for one
    image with ``full_px`` full-resolution pixels and ``low`` down-sampled
    cells (floats: averages allowed), by part: ``full`` (at full-resolution
    pixels), ``down`` (at down-sampled cells) and ``pooling`` (the pooled
    values low cells read from high cells). Convs count k x k x C_in x C_out
    per position; BatchNorm, activations and additions are not counted.

    Args:
        dense_entrance (bool): ``x`` is the dense map of a ``stride``
            entrance: the layers before the first 3x3 conv run at every
            pixel, the down-sampled ones included (the OS16 network computes
            them at OS8 too).
        feature_pool: the input's pooling, for 3x3 convs whose
            ``pool_for`` is None.
    """
    high = full_px / 4
    macs = dict(full=0.0, down=0.0, pooling=0.0)
    before_3x3 = dense_entrance
    for m in flatten_layers(layers):
        if not isinstance(m, nn.Conv2d):
            continue
        per = m.kernel_size[0] * m.kernel_size[1] * m.in_channels * \
            m.out_channels
        if _is_3x3(m):
            if before_3x3:
                before_3x3 = False
                macs['full'] += per * full_px
                macs['down'] += per * low
                continue  # the entrance conv reads the dense map: no pooling
            pool = pool_for(m) if pool_for is not None else None
            pool = feature_pool if pool is None else pool
            if low and high:  # low cells read pooled high cells
                macs['pooling'] += high * m.in_channels * \
                    pooling_macs_per_value(pool)
        macs['full'] += per * full_px
        macs['down'] += per * (4 * low if before_3x3 else low)
    return macs
