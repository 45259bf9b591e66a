"""The one dispatch point between the selective ops and their kernels.

Three tiers (as in torchsparse):

1. the public ops (:mod:`mmselds.ops.functional`): argument checks, dense
   emulation, the gather source, the index tables, and the choice between
   the uniform path and the gather path;
2. this module: :func:`backend_for` picks the kernel backend of a tensor by
   its device type and dtype; the functions below (:func:`rows_linear`,
   :func:`gather_linear`, :func:`conv2d_rows`) are what the public ops call;
3. the backends: modules that build a :class:`Backend` of plain functions
   on tensors and index tables (they know nothing of masks or features).

Registered: :mod:`.torch_ref`, the pure-PyTorch kernels, for ``'cpu'``
(its oneDNN/BLAS matmul and im2col workspace are tuned there), and for
``'cuda'`` the Triton backend (:mod:`.triton_backend`: implicit-GEMM
kernels for float16, bfloat16 and float32 on GPUs of compute capability
8.0 and newer, the reference's kernels for float64 and, with a warning,
on older GPUs) where CUDA and Triton are both available and
``MMSELDS_TRITON`` is not ``0``, else the reference. Any other device
type, and a dtype a backend does not declare, raises
``NotImplementedError`` naming both: no call ever falls back silently to
another backend.

A new backend builds a :class:`Backend` and calls
``register_backend(device_type, backend, replace=True)``; it must match
:mod:`.torch_ref` (the reference) to round-off on every test of the ops.
"""
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Optional, Sequence, Union

from torch import Tensor

from ..amp import autocast_operands
from . import torch_ref, triton_backend


@dataclass(frozen=True)
class Backend:
    """The kernels of one device type.

    Args:
        name (str): shown in error messages and :func:`registered_backends`.
        dtypes (frozenset[torch.dtype]): the dtypes the kernels support;
            any other raises at dispatch.
        rows_linear (callable): ``(rows (M, K), weight (C_out, K),
            bias, *, residual=None, relu=False) -> (M, C_out)``, the
            matmul of a sparse 1x1 conv.
        gather_linear (callable): ``(src, index (R * T,),
            weight (C_out, C, k, k), bias, *, residual=None, relu=False)
            -> (R, C_out)``: row r is
            ``sum_t src[index[r, t]] @ W_t + bias``; ``src`` is (M, C)
            rows or a tuple of (M, C_i) channel blocks of them (a
            concatenation the kernel need not form), and index M reads a
            zero row (the padding).
        conv2d_rows (callable): ``(x (N, C, H, W), weight, bias, dilation,
            stride, *, residual=None, relu=False) -> (N * H_out * W_out,
            C_out)`` raster rows of one dense conv with
            ``padding = dilation``; the uniform path.

        Each takes the layer's epilogue: ``residual`` (rows of the
        output's shape) added after the bias, then a ReLU if ``relu``;
        a backend may fuse them into its kernel.
        release_workspace (callable): frees cached buffers (no argument).
    """
    name: str
    dtypes: FrozenSet
    rows_linear: Callable
    gather_linear: Callable
    conv2d_rows: Callable
    release_workspace: Callable


_BACKENDS: Dict[str, Backend] = {}


def register_backend(device_type: str, backend: Backend,
                     replace: bool = False) -> Optional[Backend]:
    """Make ``backend`` the kernels of tensors on ``device_type``.

    Args:
        device_type (str): ``torch.device.type``, e.g. ``'cpu'``, ``'cuda'``.
        backend (Backend): the kernels.
        replace (bool): allow replacing a registered backend (a faster
            kernel taking over from the reference). Default: False.
    Returns:
        Backend | None: the backend replaced.
    """
    if not isinstance(backend, Backend):
        raise TypeError(f'expected a Backend, got {type(backend).__name__}')
    old = _BACKENDS.get(device_type)
    if old is not None and not replace:
        raise ValueError(
            f'device type {device_type!r} already has the {old.name!r} '
            'backend; pass replace=True to replace it')
    _BACKENDS[device_type] = backend
    return old


def unregister_backend(device_type: str) -> Backend:
    """Remove and return the backend of ``device_type``."""
    if device_type not in _BACKENDS:
        raise KeyError(f'no backend is registered for {device_type!r}')
    return _BACKENDS.pop(device_type)


def registered_backends() -> Dict[str, Backend]:
    """A copy of the registry: device type -> backend."""
    return dict(_BACKENDS)


def backend_for(x: Tensor) -> Backend:
    """The backend that runs the sparse kernels of ``x``.

    Raises:
        NotImplementedError: no backend for ``x``'s device type, or one that
            does not support ``x``'s dtype.
    """
    device, dtype = x.device, x.dtype
    backend = _BACKENDS.get(device.type)
    if backend is None:
        raise NotImplementedError(
            f'sparse selective execution has no kernel for {dtype} tensors '
            f'on {device}: no backend is registered for device type '
            f'{device.type!r} (registered: {sorted(_BACKENDS)}); use '
            'execution="dense" or move the model to a registered device')
    if dtype not in backend.dtypes:
        names = ', '.join(sorted(str(d).replace('torch.', '')
                                 for d in backend.dtypes))
        raise NotImplementedError(
            f'sparse selective execution has no kernel for {dtype} tensors '
            f'on {device}: the {backend.name!r} backend of device type '
            f'{device.type!r} supports {names}')
    return backend


def _epilogue(residual: Optional[Tensor], relu: bool) -> dict:
    # only what is asked: a backend without the epilogue keeps working
    # for the calls that do not use it
    kwargs = {}
    if residual is not None:
        kwargs['residual'] = residual
    if relu:
        kwargs['relu'] = True
    return kwargs


def rows_linear(rows: Tensor, weight: Tensor,
                bias: Optional[Tensor] = None, *,
                residual: Optional[Tensor] = None,
                relu: bool = False) -> Tensor:
    """``relu?((M, K) @ (C_out, K)^T + bias + residual?)`` -> (M, C_out)
    on ``rows``' backend."""
    return backend_for(rows).rows_linear(rows, weight, bias,
                                         **_epilogue(residual, relu))


def gather_linear(src: Union[Tensor, Sequence[Tensor]], index: Tensor,
                  weight: Tensor, bias: Optional[Tensor] = None, *,
                  residual: Optional[Tensor] = None,
                  relu: bool = False) -> Tensor:
    """Sparse convolution on ``src``'s backend: row r of the output is
    ``relu?(sum_t src[index[r, t]] @ W_t + bias + residual[r]?)``.

    Args:
        src (Tensor | sequence of Tensor): (M, C) source rows, or channel
            blocks (M, C_i) of them (the concatenation of mixed features:
            a backend need not form it).
        index (Tensor): (R * T,) flat (R, T) rows of ``src`` per tap, in
            [0, M]: M reads a zero row (the padding outside the map).
        weight (Tensor): (C_out, C, k, k) with T = k * k taps, row-major.
        bias (Tensor, optional): (C_out,).
    Returns:
        Tensor: (R, C_out).
    """
    first = src if isinstance(src, Tensor) else src[0]
    return backend_for(first).gather_linear(src, index, weight, bias,
                                            **_epilogue(residual, relu))


def conv2d_rows(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                dilation: int, stride: int = 1, *,
                residual: Optional[Tensor] = None,
                relu: bool = False) -> Tensor:
    """One dense conv of ``x`` (padding = dilation) on ``x``'s backend,
    returned as (N * H_out * W_out, C_out) raster rows, with the
    epilogue (``residual`` rows added, then a ReLU if ``relu``)."""
    return backend_for(x).conv2d_rows(x, weight, bias, dilation, stride,
                                      **_epilogue(residual, relu))


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           stride=1, padding=0, dilation=1, groups: int = 1, *,
           residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    """A dense conv with the epilogue ``relu?(conv(x) + residual?)`` (the
    dense stages of sparse inference): fused into oneDNN's conv for float32
    CPU tensors without autograd, separate ops elsewhere
    (:func:`.torch_ref.conv2d`). Under ``torch.autocast`` it computes in
    the autocast dtype, as ``F.conv2d`` does."""
    x, weight, bias, residual = autocast_operands(x, weight, bias, residual)
    return torch_ref.conv2d(x, weight, bias, stride, padding, dilation,
                            groups, residual=residual, relu=relu)


def release_workspace() -> None:
    """Free the cached buffers of every registered backend."""
    for backend in {id(b): b for b in _BACKENDS.values()}.values():
        backend.release_workspace()


TORCH_REF = Backend(name='torch_ref', dtypes=torch_ref.DTYPES,
                    rows_linear=torch_ref.rows_linear,
                    gather_linear=torch_ref.gather_linear,
                    conv2d_rows=torch_ref.conv2d_rows,
                    release_workspace=torch_ref.release_workspace)
register_backend('cpu', TORCH_REF)
register_backend('cuda', TORCH_REF)  # where Triton is not available
# the Triton kernels replace it where CUDA and Triton are both available
_TRITON = triton_backend.cuda_backend_if_available()
if _TRITON is not None:
    register_backend('cuda', _TRITON, replace=True)

__all__ = [
    'Backend', 'TORCH_REF', 'backend_for', 'conv2d', 'conv2d_rows',
    'gather_linear',
    'register_backend', 'registered_backends', 'release_workspace',
    'rows_linear', 'unregister_backend'
]
