"""Pure-PyTorch kernels of sparse selective execution: the CPU backend and
the reference for every other kernel.

Registered by :mod:`mmselds.ops.kernels` for ``'cpu'``, and for ``'cuda'``
where the Triton backend is not available (the same code runs there; the
CPU tuning below only applies to CPU tensors); the Triton backend uses it
for float64. The functions see tensors and
index tables only: which rows to gather is decided by the public ops.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ..versions import version

# The dtypes these kernels support (sparse execution of the public ops).
DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32,
                    torch.float64})

# Smallest matmul (multiply-adds) that rows_linear hands to oneDNN on the CPU.
_ONEDNN_MACS = 10**8

# Largest reduction length K that rows_linear hands to oneDNN on the CPU:
# longer rows (the im2col of a 3x3 conv on >= ~1000 channels, as in the
# ASPP head) run faster in BLAS (MKL).
_ONEDNN_MAX_K = 8192

# Largest im2col block gathered at once by gather_linear: larger blocks are
# a little faster, smaller ones lower the peak memory.
_GATHER_BYTES = 80 * 2**20

# Smallest gather_linear (multiply-adds) that multiplies tap first: below
# it the 9 matmuls per channel block and the embedding_bag cost more in
# fixed costs than im2col's one gather and one matmul (measured on an Intel
# Xeon with AVX-512: 1.17-1.55x im2col's time at 0.09-0.15 GMACs, 0.95 at
# 1.2 GMACs with one block, 1.18 at 0.74 GMACs with 5 blocks, 0.82-0.92 at
# 6-9 GMACs; the R101 ASPP head's convs are 48-60 GMACs at s = 0.5).
_TAP_FIRST_MACS = 2 * 10**9

# Reused im2col buffers of inference (no autograd), one per device and
# dtype: a fresh buffer of this size costs more in page faults than the
# gather itself on the CPU.
_WORKSPACE: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}


def _workspace(numel: int, like: Tensor) -> Tensor:
    key = (like.device, like.dtype)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < numel:
        buf = _WORKSPACE[key] = like.new_empty(numel)
    return buf[:numel]


def release_workspace() -> None:
    """Free the cached im2col buffers of sparse inference."""
    _WORKSPACE.clear()


_FUSED = None  # oneDNN's conv + add + ReLU op, once probed (False: absent)


def _fused_conv():
    """oneDNN's convolution with a fused add/ReLU epilogue
    (``torch.ops.mkldnn._convolution_pointwise``, the op torch's compiler
    uses on CPUs), or None where this torch build lacks it or it does not
    compute what it should (probed once on a tiny case)."""
    global _FUSED
    if _FUSED is None:
        _FUSED = False
        op = getattr(torch.ops.mkldnn, '_convolution_pointwise', None)
        if op is not None and torch.backends.mkldnn.is_available():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, 3, 4, 4, generator=g)
            w = torch.randn(2, 3, 3, 3, generator=g)
            b = torch.randn(2, generator=g)
            r = torch.randn(1, 2, 4, 4, generator=g)
            try:
                with torch.no_grad():
                    y = F.conv2d(x, w, b, padding=2, dilation=2)
                    ok = torch.allclose(
                        op(x, w, b, [2, 2], [1, 1], [2, 2], 1, 'relu', [],
                           None), y.relu(), atol=1e-5) and torch.allclose(
                        op.binary(x, r, w, b, [2, 2], [1, 1], [2, 2], 1,
                                  'add', None, 'relu', [], None),
                        (y + r).relu(), atol=1e-5) and torch.allclose(
                        op.binary(x, r, w, b, [2, 2], [1, 1], [2, 2], 1,
                                  'add', None, None, [], None),
                        y + r, atol=1e-5)
            except RuntimeError:
                ok = False
            _FUSED = op if ok else False
    return _FUSED or None


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           stride: int = 1, padding: int = 0, dilation: int = 1,
           groups: int = 1, residual: Optional[Tensor] = None,
           relu: bool = False) -> Tensor:
    """``relu?(F.conv2d(x, ...) + residual?)``. For float32 CPU tensors
    without autograd the add and the ReLU run inside oneDNN's conv (one
    pass over the output less for each), elsewhere as separate ops; also
    under a torch dispatch mode (FLOP counters, tracing), which sees the
    standard ops it knows. ``residual`` has the output's shape."""
    fuse = relu or residual is not None
    if fuse and x.device.type == 'cpu' and x.dtype == torch.float32 \
            and not is_in_torch_dispatch_mode() \
            and not (torch.is_grad_enabled() and any(
                t is not None and t.requires_grad
                for t in (x, weight, bias, residual))):
        op = _fused_conv()
        if op is not None:
            args = (weight, bias, _pair(padding), _pair(stride),
                    _pair(dilation), groups)
            if residual is None:
                return op(x, *args, 'relu', [], None)
            return op.binary(x, residual, *args, 'add', None,
                             'relu' if relu else None, [], None)
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    return out.relu() if relu else out


def _pair(v) -> list:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def rows_linear(rows: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                *, residual: Optional[Tensor] = None,
                relu: bool = False) -> Tensor:
    """``relu?(rows @ weight^T + bias + residual?)``, (M, K) rows and
    (C_out, K) weight -> (M, C_out): the matmul of every sparse layer, with
    the residual add and ReLU of the layer's epilogue.

    On the CPU a 1x1 convolution over channels-last rows runs oneDNN's
    kernels, ~1.4x faster than ``torch.mm`` (MKL) on the build machines for
    large products, with the epilogue fused (:func:`conv2d`); below
    ``_ONEDNN_MACS`` multiply-adds oneDNN's fixed cost (~0.15 ms a call)
    makes ``torch.mm`` faster, and above ``_ONEDNN_MAX_K`` input columns
    BLAS is faster (measured on an Intel Xeon with AVX-512, M = 1024 to
    4096 rows, 512 outputs: oneDNN takes 1.18x BLAS's time at K = 9216,
    1.11-1.37x at K = 18432 and 23040, the ASPP head's 3x3 convs; 0.93x at
    K = 2304, the backbone's).
    """
    M, K = rows.shape
    if rows.device.type != 'cpu' or K > _ONEDNN_MAX_K \
            or M * K * weight.shape[0] < _ONEDNN_MACS:
        out = F.linear(rows, weight, bias)
        if torch.is_grad_enabled():
            out = out if residual is None else out + residual
            return out.relu() if relu else out
        if residual is not None:
            out.add_(residual)
        return out.relu_() if relu else out
    n = weight.shape[0]
    res = None if residual is None else \
        residual.reshape(1, 1, M, n).permute(0, 3, 1, 2)
    out = conv2d(rows.view(1, 1, M, K).permute(0, 3, 1, 2),
                 weight.reshape(n, K, 1, 1), bias, residual=res, relu=relu)
    return out.permute(0, 2, 3, 1).reshape(M, -1)


def _parts(src) -> Tuple[Tensor, ...]:
    """The channel blocks of a gather source (one tensor, or a sequence of
    (M, C_i) tensors whose channels concatenate)."""
    parts = (src, ) if isinstance(src, Tensor) else tuple(src)
    if not parts or any(p.dim() != 2 or p.shape[0] != parts[0].shape[0]
                        for p in parts):
        raise ValueError('the gather source must be (M, C) rows or blocks '
                         'of (M, C_i) rows, got shapes '
                         f'{[tuple(p.shape) for p in parts]}')
    return parts


def gather_linear(src, index: Tensor, weight: Tensor,
                  bias: Optional[Tensor] = None, *,
                  residual: Optional[Tensor] = None,
                  relu: bool = False) -> Tensor:
    """Sparse convolution: row r of the output is
    ``relu?(sum_t src[index[r, t]] @ W_t + bias + residual[r]?)``, where
    row M of the M source rows reads zeros (the padding outside the map).

    Two ways, the same function:

    * tap first (without autograd, when the source has no more rows than
      the output, more input than output channels and the product is at
      least ``_TAP_FIRST_MACS`` multiply-adds, as the 3x3 convs of a
      full-size ASPP head): ``Y_t = src @ W_t^T`` for every tap t, one
      matmul per tap and channel block into the reused workspace, then the
      output rows sum their taps' rows of Y (``F.embedding_bag``). It
      moves T x C_out values a row where im2col moves T x C_in, and never
      forms the concatenation of a source given in blocks. Measured on the
      build machine (R101 ASPP shapes, 5120 rows, 2048 or 2560 -> 512
      channels): 0.87-0.95x im2col's time.
    * im2col: gathers the (R, T * C) matrix in blocks of at most
      ``_GATHER_BYTES`` (into the reused workspace when no gradient is
      recorded) and multiplies each block by :func:`rows_linear`.

    Args:
        src (Tensor | sequence of Tensor): (M, C) source rows, or blocks of
            (M, C_i) rows whose channels concatenate (C = sum C_i).
        index (Tensor): (R * T,) flat (R, T) rows of ``src`` per tap, in
            [0, M]; M reads a zero row.
        weight (Tensor): (C_out, C, k, k) with T = k * k taps, row-major.
        bias (Tensor, optional): (C_out,).
        residual (Tensor, optional): (R, C_out) added before the ReLU.
        relu (bool): apply a ReLU. Default: False.
    Returns:
        Tensor: (R, C_out).
    """
    parts = _parts(src)
    M = parts[0].shape[0]
    c_out, c_in = weight.shape[:2]
    taps = weight.shape[2] * weight.shape[3]
    R = index.numel() // taps
    if R == 0:
        return parts[0].new_zeros(0, c_out)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in parts + (weight, bias, residual))
    if not grad and M <= R and c_in > c_out and \
            R * taps * c_in * c_out >= _TAP_FIRST_MACS:
        out = _tap_first(parts, index, weight)
        if bias is not None:
            out.add_(bias)
        if residual is not None:
            out.add_(residual)
        return out.relu_() if relu else out
    src = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
    w2d = weight.permute(0, 2, 3, 1).reshape(c_out, taps * c_in)
    row_bytes = taps * c_in * src.element_size()
    blocks = -(-R * row_bytes // _GATHER_BYTES)
    block = -(-R // blocks)
    pad = _zero_reads(index, M)
    outs = []
    for start in range(0, R, block):
        lo, hi = start * taps, (start + block) * taps
        idx, at = index[lo:hi], pad
        if pad is not None and blocks > 1:
            at = pad[(pad >= lo) & (pad < hi)] - lo
        if at is not None:  # read row 0 there, then zero it
            idx = idx.index_fill(0, at, 0)
        if grad:
            cols = src.index_select(0, idx)
            if at is not None:
                cols = cols.index_fill(0, at, 0)
        else:
            cols = torch.index_select(
                src, 0, idx, out=_workspace(idx.numel() * c_in, src).view(
                    idx.numel(), c_in))
            if at is not None:
                cols.index_fill_(0, at, 0)
        outs.append(rows_linear(
            cols.view(-1, taps * c_in), w2d, bias, relu=relu,
            residual=None if residual is None else
            residual[start:start + block]))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _zero_reads(index: Tensor, M: int) -> Optional[Tensor]:
    """Positions of ``index`` that read the zero row M (past the source),
    or None. Kept on the index tensor while it is unchanged: an index table
    is built once per mask and serves every conv of a pass, so the scan
    runs once per table, not once per conv."""
    key = (M, version(index))
    keep = key[1] is not None
    kept = index.__dict__.get('_mmselds_zero_reads')
    if keep and kept is not None and kept[0] == key:
        return kept[1]
    pad = (index == M).nonzero().view(-1)
    pad = pad if pad.numel() else None
    if keep:
        index.__dict__['_mmselds_zero_reads'] = (key, pad)
    return pad


def _tap_first(parts: Tuple[Tensor, ...], index: Tensor,
               weight: Tensor) -> Tensor:
    """``sum_t Y_t[index[:, t]]`` with ``Y_t = cat(parts) @ W_t^T`` and a
    zero row at M: the tap-first gather-linear (no bias), Y built in the
    workspace for as many taps at once as ``_GATHER_BYTES`` holds."""
    M = parts[0].shape[0]
    c_out = weight.shape[0]
    taps = weight.shape[2] * weight.shape[3]
    R = index.numel() // taps
    # W_t as (C_out, C) blocks of the channels-last weight, read in place
    w3 = weight.permute(0, 2, 3, 1).reshape(c_out, taps, -1)
    group = max(1, min(taps, _GATHER_BYTES //
                       ((M + 1) * c_out * parts[0].element_size())))
    groups = -(-taps // group)
    group = -(-taps // groups)
    table = index.view(R, taps)
    out = None
    for t0 in range(0, taps, group):
        t1 = min(t0 + group, taps)
        ys = _workspace((t1 - t0) * (M + 1) * c_out, parts[0]).view(
            t1 - t0, M + 1, c_out)
        for t in range(t0, t1):
            y, c = ys[t - t0], 0
            for j, p in enumerate(parts):
                w_t = w3[:, t, c:c + p.shape[1]].t()
                c += p.shape[1]
                if j == 0:
                    torch.mm(p, w_t, out=y[:M])
                else:  # (not addmm_, which torch's FLOP counter skips)
                    torch.addmm(y[:M], p, w_t, out=y[:M])
            y[M] = 0
        rows = table[:, t0:t1] + torch.arange(
            0, (t1 - t0) * (M + 1), M + 1, device=index.device)
        part = F.embedding_bag(rows, ys.view(-1, c_out), mode='sum')
        out = part if out is None else out.add_(part)
    return out


def conv2d_rows(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                dilation: int, stride: int = 1, *,
                residual: Optional[Tensor] = None,
                relu: bool = False) -> Tensor:
    """One dense conv (padding = dilation) of the (N, C, H, W) map ``x``,
    returned as (N * H_out * W_out, C_out) raster rows, with the optional
    ``residual`` rows added and a ReLU: the uniform path (all cells at one
    resolution). For a channels-last ``x`` (a view of sparse rows) the conv
    runs channels-last and the rows are a free view.
    """
    n, _, h, w = x.shape
    h_out = (h - 1) // stride + 1
    w_out = (w - 1) // stride + 1
    res = None if residual is None else residual.reshape(
        n, h_out, w_out, -1).permute(0, 3, 1, 2)
    out = conv2d(x, weight, bias, stride, dilation, dilation,
                 residual=res, relu=relu)
    return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
