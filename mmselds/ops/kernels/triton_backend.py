"""The Triton backend of sparse selective execution (GPU fast path).

:func:`build_backend` bundles the kernels of :mod:`.triton_kernels` in a
:class:`~mmselds.ops.kernels.Backend`: ``rows_linear`` (1x1 convs) and
``gather_linear`` (3x3 convs of any dilation, and the stage entrance) run
the implicit-GEMM Triton kernel; ``conv2d_rows`` (the uniform path: every
cell at one resolution) stays the reference's dense ``F.conv2d`` (cuDNN),
and there is no workspace to release.

:mod:`mmselds.ops.kernels` registers it for ``'cuda'`` (replacing the
pure-PyTorch reference) when :func:`available` says so: CUDA is available,
Triton imports, and the environment variable ``MMSELDS_TRITON`` is not
``0`` (set it to ``0`` to keep the reference on CUDA, e.g. to compare).
This module does not import Triton: the backend's kernels import it on
their first call, so installs without Triton (every CPU install) import
:mod:`mmselds.ops` as before, and importing it costs nothing until a
sparse kernel runs on a GPU.

Tests on machines without a GPU run the same kernels on CPU tensors in
Triton's interpreter: ``build_backend(interpret=True)``, registered for
``'cpu'`` in a test and the reference put back after it.
"""
import functools
import importlib.util
import os

import torch

from . import torch_ref

NAME = 'triton'


def triton_installed() -> bool:
    """Whether ``import triton`` can succeed (without importing it)."""
    try:
        return importlib.util.find_spec('triton') is not None
    except (ImportError, ValueError):
        return False


def available() -> bool:
    """Whether the Triton backend should run the sparse kernels of CUDA
    tensors: CUDA is available, Triton is installed, and ``MMSELDS_TRITON``
    is not ``0``."""
    if os.environ.get('MMSELDS_TRITON', '1').strip() == '0':
        return False
    return torch.cuda.is_available() and triton_installed()


# The dtypes of the kernels (float32 accumulation for every one);
# triton_kernels checks them too.
DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})


def _kernels():
    """:mod:`.triton_kernels`, imported (with Triton) on first use."""
    from . import triton_kernels
    return triton_kernels


def _reference_epilogue(kwargs: dict) -> dict:
    return dict(residual=kwargs.get('residual'),
                relu=kwargs.get('relu', False))


def _rows_linear(rows, weight, bias=None, **kwargs):
    if rows.dtype == torch.float64:  # the reference's kernel
        return torch_ref.rows_linear(rows, weight, bias,
                                     **_reference_epilogue(kwargs))
    return _kernels().rows_linear(rows, weight, bias, **kwargs)


def _gather_linear(src, index, weight, bias=None, **kwargs):
    if not isinstance(src, torch.Tensor):  # channel blocks: one source
        src = src[0] if len(src) == 1 else torch.cat(tuple(src), 1)
    if src.dtype == torch.float64:  # the reference's kernel
        return torch_ref.gather_linear(src, index, weight, bias,
                                       **_reference_epilogue(kwargs))
    return _kernels().gather_linear(src, index, weight, bias, **kwargs)


def _release_workspace() -> None:
    """The Triton kernels keep no buffer between calls."""


def build_backend(interpret: bool = False):
    """The Triton :class:`~mmselds.ops.kernels.Backend`. Triton itself is
    imported on the first kernel call.

    Args:
        interpret (bool): run the kernels in Triton's interpreter on CPU
            tensors (for tests without a GPU; register the result for
            ``'cpu'``). Default: False (compiled, CUDA tensors; any other
            device is a ``NotImplementedError``).
    Returns:
        Backend: named ``'triton'`` (``'triton-interpreter'`` with
        ``interpret=True``): the Triton kernels for float16, bfloat16 and
        float32, and the reference's kernels for float64 (Triton has no
        float64 ``tl.dot`` worth the name; the result is the reference's,
        so dispatching float64 CUDA tensors here changes nothing that
        ``torch_ref`` computed before).
    """
    from . import Backend  # the package imports this module
    return Backend(
        name=NAME + ('-interpreter' if interpret else ''),
        dtypes=DTYPES | {torch.float64},
        rows_linear=functools.partial(_rows_linear, interpret=interpret),
        gather_linear=functools.partial(_gather_linear, interpret=interpret),
        conv2d_rows=torch_ref.conv2d_rows,
        release_workspace=_release_workspace)


def cuda_backend_if_available():
    """:func:`build_backend` for CUDA when :func:`available`, else None."""
    return build_backend() if available() else None
