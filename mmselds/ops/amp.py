"""Automatic mixed precision: the dtype convs compute in under
``torch.autocast``, for the selective ops and kernels that autocast does
not reach (custom kernels, fused oneDNN ops, mixed features)."""
from typing import Optional

import torch


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype convs compute in under ``torch.autocast`` on ``device``'s
    type (float16 or bfloat16), or None when autocast is off there."""
    kind = device.type
    try:
        enabled = torch.is_autocast_enabled(kind)
    except TypeError:  # torch < 2.4: no device argument
        enabled = torch.is_autocast_cpu_enabled() if kind == 'cpu' else \
            kind == 'cuda' and torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(kind)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if kind == 'cpu' else \
            torch.get_autocast_gpu_dtype()


def amp_dtype(x) -> Optional[torch.dtype]:
    """The dtype a conv reading ``x`` (a tensor or a mixed feature)
    computes in under ``torch.autocast``, as ``F.conv2d`` does there
    (floating-point operands other than float64 are cast to the autocast
    dtype); None without autocast."""
    if not x.dtype.is_floating_point or x.dtype == torch.float64:
        return None
    return autocast_dtype(x.device)


def cast(dtype: Optional[torch.dtype], *tensors):
    """``tensors`` in ``dtype`` (None and tensors in ``dtype`` as they are;
    objects with a ``to(dtype)`` method, such as mixed features, too); all
    unchanged when ``dtype`` is None."""
    if dtype is None:
        return tensors
    return tuple(t if t is None or t.dtype == dtype else t.to(dtype)
                 for t in tensors)


def autocast_operands(x, *others):
    """``(x, *others)`` cast as autocast casts the operands of a conv that
    reads ``x`` (:func:`amp_dtype`); unchanged without autocast."""
    return cast(amp_dtype(x), x, *others)
