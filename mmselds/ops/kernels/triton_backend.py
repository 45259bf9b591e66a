"""The Triton backend of sparse selective execution (GPU fast path).

:func:`build_backend` bundles the kernels of :mod:`.triton_kernels` in a
:class:`~mmselds.ops.kernels.Backend`: ``rows_linear`` (1x1 convs) and
``gather_linear`` (3x3 convs of any dilation, and the stage entrance) run
the implicit-GEMM Triton kernel; ``conv2d_rows`` (the uniform path: every
cell at one resolution) stays the reference's dense ``F.conv2d`` (cuDNN).

:mod:`mmselds.ops.kernels` registers it for ``'cuda'`` (replacing the
pure-PyTorch reference) when :func:`available` says so: CUDA is available,
Triton imports, and the environment variable ``MMSELDS_TRITON`` is not
``0`` (set it to ``0`` to keep the reference on CUDA, e.g. to compare).
This module does not import Triton: the backend's kernels import it on
their first call, so installs without Triton (every CPU install) import
:mod:`mmselds.ops` as before, and importing it costs nothing until a
sparse kernel runs on a GPU.

The kernels run on GPUs of compute capability 8.0 and newer (A100, A40,
L40, H100, ...). On older ones (V100, T4, RTX 20xx) Triton compiles
``tl.dot`` to FMA loops instead of tensor-core instructions (seen in the
PTX with Triton 3.6, 3.7 and 3.9), so there the backend runs the
reference's kernels (gather + cuBLAS matmul: the same results) and warns
once per GPU; ``build_backend(min_capability=None)`` runs Triton anyway.

Tests on machines without a GPU run the same kernels on CPU tensors in
Triton's interpreter: ``build_backend(interpret=True)``, registered for
``'cpu'`` in a test and the reference put back after it.
"""
import functools
import importlib.util
import os
import warnings
from typing import Optional, Tuple

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


# the compute capability from which Triton's tl.dot uses tensor cores
# (mma.sync on sm_8x, wgmma on sm_90); below it, FMA loops
TENSOR_CORE_CAPABILITY = (8, 0)


@functools.lru_cache(maxsize=None)
def _capable(index: int, min_capability: Tuple[int, int]) -> bool:
    """Whether CUDA device ``index`` has ``min_capability``; warns once per
    device that has not."""
    capability = tuple(torch.cuda.get_device_capability(index))
    if capability >= tuple(min_capability):
        return True
    warnings.warn(
        f'mmselds: {torch.cuda.get_device_name(index)} (cuda:{index}) has '
        f'compute capability {capability[0]}.{capability[1]}; the Triton '
        f'kernels need {min_capability[0]}.{min_capability[1]} for tensor '
        'cores (below it Triton compiles its matmul to FMA loops), so '
        'sparse selective convs on this GPU run the PyTorch reference '
        'kernels (gather + cuBLAS matmul; the same results). Set '
        'MMSELDS_TRITON=0 to choose them and silence this.',
        stacklevel=3)
    return False


def _use_triton(x: torch.Tensor, interpret: bool,
                min_capability: Optional[Tuple[int, int]]) -> bool:
    """Whether the Triton kernels (not the reference's) take ``x``: in the
    interpreter, on GPUs of ``min_capability`` (None: any), and for other
    devices (whose error the kernels raise)."""
    if x.dtype == torch.float64:  # no float64 tl.dot worth the name
        return False
    if interpret or min_capability is None or x.device.type != 'cuda':
        return True
    index = x.device.index
    if index is None:
        index = torch.cuda.current_device()
    return _capable(index, tuple(min_capability))


def _rows_linear(rows, weight, bias=None, *, interpret, min_capability,
                 **kwargs):
    if not _use_triton(rows, interpret, min_capability):
        return torch_ref.rows_linear(rows, weight, bias,
                                     **_reference_epilogue(kwargs))
    return _kernels().rows_linear(rows, weight, bias, interpret=interpret,
                                  **kwargs)


def _gather_linear(src, index, weight, bias=None, *, interpret,
                   min_capability, **kwargs):
    blocks = not isinstance(src, torch.Tensor)
    if not _use_triton(src[0] if blocks else src, interpret,
                       min_capability):  # the reference takes the blocks
        return torch_ref.gather_linear(src, index, weight, bias,
                                       **_reference_epilogue(kwargs))
    if blocks:  # channel blocks: one source for the kernel
        src = src[0] if len(src) == 1 else torch.cat(tuple(src), 1)
    return _kernels().gather_linear(src, index, weight, bias,
                                    interpret=interpret, **kwargs)


def _release_workspace() -> None:
    """The Triton kernels keep no buffer between calls; the reference's
    kernels, which take float64 and the GPUs below ``min_capability``,
    keep their im2col workspace."""
    torch_ref.release_workspace()


def build_backend(interpret: bool = False,
                  min_capability: Optional[Tuple[int, int]] = (
                      TENSOR_CORE_CAPABILITY)):
    """The Triton :class:`~mmselds.ops.kernels.Backend`. Triton itself is
    imported on the first kernel call.

    Args:
        interpret (bool): run the kernels in Triton's interpreter on CPU
            tensors (for tests without a GPU; register the result for
            ``'cpu'``). Default: False (compiled, CUDA tensors; any other
            device is a ``NotImplementedError``).
        min_capability (tuple[int, int], optional): CUDA tensors on GPUs
            of a lower compute capability take the reference's kernels
            (with a warning, once per GPU). Default: (8, 0), where Triton's
            matmul starts using tensor cores; None: Triton on every GPU.
    Returns:
        Backend: named ``'triton'`` (``'triton-interpreter'`` with
        ``interpret=True``): the Triton kernels for float16, bfloat16 and
        float32, and the reference's kernels for float64 (Triton has no
        float64 ``tl.dot`` worth the name; the result is the reference's,
        so dispatching float64 CUDA tensors here changes nothing that
        ``torch_ref`` computed before), and for the CUDA tensors of GPUs
        below ``min_capability``.
    """
    from . import Backend  # the package imports this module
    return Backend(
        name=NAME + ('-interpreter' if interpret else ''),
        dtypes=DTYPES | {torch.float64},
        rows_linear=functools.partial(_rows_linear, interpret=interpret,
                                      min_capability=min_capability),
        gather_linear=functools.partial(_gather_linear, interpret=interpret,
                                        min_capability=min_capability),
        conv2d_rows=torch_ref.conv2d_rows,
        release_workspace=_release_workspace)


def cuda_backend_if_available():
    """:func:`build_backend` for CUDA when :func:`available`, else None."""
    return build_backend() if available() else None
