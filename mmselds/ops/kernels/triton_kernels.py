"""Triton kernels of sparse selective execution: one implicit-GEMM kernel.

Row ``r`` of the output is ``sum_t src[index[r, t]] @ W_t (+ bias)
(+ residual[r]) (ReLU)``, row M of the M source rows reading zeros (the
padding): the kernel reads the source rows through the
index table of :class:`~mmselds.ops.CellMask` (``conv_index`` /
``entrance_index``) directly, tap by tap, into its tiles (no im2col matrix
is ever written), accumulates in float32 and writes the (R, C_out) output
rows once, with the bias, an optional residual add and an optional ReLU
applied in the epilogue. The same kernel without an index table is the
matmul of a sparse 1x1 conv (:func:`rows_linear`). Dilation, stride and
padding live in the index table only, so one kernel serves every 3x3
conv, every dilation and the stage entrance.

This module imports Triton; :mod:`.triton_backend` imports it only where
Triton is installed. Kernels run compiled on CUDA tensors, or, with
``interpret=True``, in Triton's interpreter on CPU tensors (slow: for tests
on machines without a GPU; no ``TRITON_INTERPRET`` variable is needed).

The kernels run forward only; autograd works through them (the backward
pass is plain torch: a scatter-add of ``grad @ W_t`` into the source rows
and ``im2col^T @ grad`` for the weight).
"""
import contextlib
import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_backend import DTYPES

_INDEX_DTYPES = (torch.int32, torch.int64)


def _selective_gemm(src_ptr, index_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
                    R, C_out, M_SRC,
                    stride_sm, stride_sk,
                    stride_wn, stride_wk, stride_wy, stride_wx,
                    stride_rm, stride_rn, stride_om, stride_on,
                    C_IN: tl.constexpr, K_BLOCKS: tl.constexpr,
                    EVEN_K: tl.constexpr, KSIZE: tl.constexpr,
                    TAPS: tl.constexpr, HAS_INDEX: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                    RELU: tl.constexpr, UPCAST: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of ``out``: the loop runs over the taps
    and, within a tap, over BLOCK_K input channels (one flat loop, so that
    Triton pipelines the loads of all taps)."""
    # tiles in groups of GROUP_M row blocks (weight tiles stay in L2)
    pid = tl.program_id(0)
    # (no tl.cdiv / tl.zeros: library @jit functions, which Triton's
    # interpreter only runs if it was on when triton was imported)
    num_m = (R + BLOCK_M - 1) // BLOCK_M
    num_n = (C_out + BLOCK_N - 1) // BLOCK_N
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_ok = rm < R
    col_ok = rn < C_out
    # in the loop, rows / columns past the end read row / column 0
    # (R, C_out >= 1; no masks on the operand loads) and are never stored
    rm_in = tl.where(row_ok, rm, 0).to(tl.int64)
    rn_in = tl.where(col_ok, rn, 0).to(tl.int64)

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for i in range(TAPS * K_BLOCKS):
        t = i // K_BLOCKS
        kk = (i - t * K_BLOCKS) * BLOCK_K + rk
        if HAS_INDEX:
            rows = tl.load(index_ptr + rm_in * TAPS + t).to(tl.int64)
            # row M_SRC (past the source) reads zeros: the padding
            src_ok = rows < M_SRC
            rows = tl.where(src_ok, rows, 0)
        else:
            rows = rm_in
            src_ok = row_ok | True
        a_ptrs = src_ptr + rows[:, None] * stride_sm \
            + kk[None, :] * stride_sk
        b_ptrs = w_ptr + (t // KSIZE) * stride_wy + (t % KSIZE) * stride_wx \
            + kk[:, None] * stride_wk + rn_in[None, :] * stride_wn
        if EVEN_K:
            if HAS_INDEX:
                a = tl.load(a_ptrs, mask=src_ok[:, None], other=0.0)
            else:
                a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=src_ok[:, None] & (kk[None, :] < C_IN),
                        other=0.0)
            b = tl.load(b_ptrs, mask=kk[:, None] < C_IN, other=0.0)
        if UPCAST:  # see _launch: the interpreter's bfloat16 dot
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    # the epilogue addresses the tile's own rows and columns, unclamped
    # (masked lanes touch no memory): the columns keep their contiguity, so
    # the bias, residual and output rows move in 16-byte vectors (clamped
    # columns compiled to one 2-byte access an element, and to register
    # spills on sm_90)
    ro = rm.to(tl.int64)
    co = rn.to(tl.int64)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=col_ok,
                       other=0.0).to(tl.float32)[None, :]
    out_mask = row_ok[:, None] & col_ok[None, :]
    if HAS_RES:
        res = tl.load(res_ptr + ro[:, None] * stride_rm
                      + co[None, :] * stride_rn, mask=out_mask, other=0.0)
        acc += res.to(tl.float32)
    if RELU:  # NaN stays NaN, as torch.relu keeps it (the default drops it)
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + ro[:, None] * stride_om + co[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@functools.lru_cache(maxsize=None)
def _kernel(interpret: bool):
    """The kernel compiled for the GPU, or run by Triton's interpreter."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction(_selective_gemm)
    return triton.jit(_selective_gemm)


class Config(NamedTuple):
    """Tile sizes and launch options of one kernel call."""
    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


# host-side arithmetic of a launch in plain Python: triton.cdiv and
# triton.next_power_of_2 are Triton callables that unwrap their arguments
# (~4 us a call with Triton 3.9, five a launch), time the host spends on
# every sparse conv
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int, lo: int, hi: int) -> int:
    """The power of two >= n, clamped to [lo, hi]."""
    return max(lo, min(hi, 1 << (max(int(n), 1) - 1).bit_length()))


def default_config(rows: int, c_in: int, c_out: int, dtype: torch.dtype,
                   interpret: bool = False, gather: bool = False) -> Config:
    """Tile sizes for ``rows`` output rows of ``c_out`` channels from
    ``c_in`` input channels per tap (a heuristic, not autotuned: 128 x 128
    tiles, 64 input channels a step in 16-bit and 32 in float32, i.e. 32 KiB
    of operands a pipeline stage; 64-row tiles below 8192 rows, for more
    tiles on small products).

    ``gather``: the kernel reads its rows through an index table. Triton's
    pipeliner splits the ``num_stages - 1`` stages of load latency between
    the index load and the tile loads it feeds, so with 3 stages the
    gather kernel's source and weight tiles had one shared-memory buffer
    on sm_80 / sm_86 (A100, A40) and each tile's loads waited for the
    previous product. It gets 5 stages (the plain matmul 3): two buffers
    on sm_8x (66 KiB of shared memory), three on sm_90 (seen in the
    compiled IR with Triton 3.6 and 3.9; checked by the tests)."""
    if interpret:  # few, small programs: the interpreter runs them in numpy
        return Config(_pow2(rows, 16, 64), _pow2(c_out, 16, 64),
                      _pow2(c_in, 16, 64), num_stages=1)
    block_m = 128 if rows >= 8192 else 64
    block_n = _pow2(c_out, 16, 128)
    block_k = _pow2(c_in, 16, 32 if dtype == torch.float32 else 64)
    warps = 8 if block_m * block_n >= 128 * 128 else 4
    return Config(block_m, block_n, block_k, 8, warps, 5 if gather else 3)


def _tf32() -> bool:
    """float32 products in TF32 follow cuDNN's switch for convolutions
    (``torch.backends.cudnn.allow_tf32``, on by default), so a selective
    conv rounds as the dense conv and the uniform path do."""
    return bool(torch.backends.cudnn.allow_tf32)


def _check(x: Tensor, what: str, dtype: torch.dtype,
           device: torch.device) -> None:
    if x.dtype != dtype or x.device != device:
        raise ValueError(f'{what} is {x.dtype} on {x.device} but the source '
                         f'rows are {dtype} on {device}')


def _check_source(src: Tensor, interpret: bool) -> None:
    if interpret:
        if src.device.type != 'cpu':
            raise NotImplementedError(
                f'the Triton interpreter (interpret=True) runs on CPU '
                f'tensors; got {src.dtype} tensors on {src.device}')
    elif src.device.type != 'cuda':
        raise NotImplementedError(
            f'the triton kernels run on CUDA tensors; got {src.dtype} '
            f'tensors on {src.device} (interpret=True runs them in '
            "Triton's interpreter on CPU tensors, for tests)")
    if src.dtype not in DTYPES:
        names = ', '.join(sorted(str(d).replace('torch.', '')
                                 for d in DTYPES))
        raise NotImplementedError(
            f'the triton kernels have no kernel for {src.dtype} tensors on '
            f'{src.device}; they support {names}')


class KernelInfo(NamedTuple):
    """The launch of one kernel call: its tile configuration and what the
    compiled kernel uses per program (None where nothing was compiled: the
    interpreter, an empty product, or a Triton that does not report it)."""
    config: Optional[Config]
    registers: Optional[int] = None  # per thread
    # local memory per thread (register spills), in 4-byte words: what
    # Triton's n_spills says (CUDA's local size in bytes / 4)
    spills: Optional[int] = None
    shared: Optional[int] = None  # bytes of shared memory per program


def _info(config: Optional[Config], compiled) -> KernelInfo:
    if compiled is None:
        return KernelInfo(config)
    # n_regs / n_spills exist once the kernel was loaded (by its launch)
    meta = getattr(compiled, 'metadata', None)
    return KernelInfo(config, getattr(compiled, 'n_regs', None),
                      getattr(compiled, 'n_spills', None),
                      getattr(meta, 'shared', None))


def _launch(src: Tensor, index: Optional[Tensor], weight: Tensor, ksize: int,
            w_strides, bias: Optional[Tensor], residual: Optional[Tensor],
            relu: bool, out: Tensor, interpret: bool,
            config: Optional[Config]) -> KernelInfo:
    """Write ``out``; return what was launched."""
    R, c_out = out.shape
    c_in = src.shape[1]
    if R == 0 or c_out == 0:
        return KernelInfo(None)
    if c_in == 0:  # an empty sum
        out.copy_(_epilogue(out.new_zeros(out.shape), bias, residual, relu))
        return KernelInfo(None)
    if config is None:
        config = default_config(R, c_in, c_out, src.dtype, interpret,
                                gather=index is not None)
    if bias is not None:
        bias = bias.contiguous()
    dummy = out  # pointer of absent operands (never read)
    res = residual if residual is not None else dummy
    grid = (_cdiv(R, config.block_m) * _cdiv(c_out, config.block_n), )
    device = contextlib.nullcontext() if interpret else \
        torch.cuda.device(src.device)  # launch on the tensors' GPU
    with device:
        compiled = _kernel(interpret)[grid](
            src, index if index is not None else dummy, weight,
            bias if bias is not None else dummy, res, out,
            R, c_out, src.shape[0],
            src.stride(0), src.stride(1),
            *w_strides,
            res.stride(0), res.stride(1), out.stride(0), out.stride(1),
            C_IN=c_in, K_BLOCKS=_cdiv(c_in, config.block_k),
            EVEN_K=c_in % config.block_k == 0, KSIZE=ksize,
            TAPS=ksize * ksize,
            HAS_INDEX=index is not None, HAS_BIAS=bias is not None,
            HAS_RES=residual is not None, RELU=bool(relu),
            # Triton's interpreter multiplies bfloat16 tiles as their raw
            # uint16 bits (checked with Triton 3.9): it gets float32 tiles
            UPCAST=interpret and src.dtype == torch.bfloat16,
            PRECISION='tf32' if src.dtype == torch.float32 and _tf32()
            else 'ieee',
            BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            BLOCK_K=config.block_k, GROUP_M=config.group_m,
            num_warps=config.num_warps, num_stages=config.num_stages,
            enable_fp_fusion=True)  # Triton's default, stated (3.9 warns)
    return _info(config, None if interpret else compiled)


def _epilogue(y: Tensor, bias, residual, relu) -> Tensor:
    if bias is not None:
        y = y + bias
    if residual is not None:
        y = y + residual
    return y.relu() if relu else y


def _prepare(src: Tensor, index: Optional[Tensor], weight: Tensor,
             bias: Optional[Tensor], residual: Optional[Tensor],
             out: Optional[Tensor], R: int, interpret: bool) -> None:
    """Check the operands."""
    _check_source(src, interpret)
    if src.dim() != 2:
        raise ValueError(f'source rows must be (M, C), got {tuple(src.shape)}')
    c_out = weight.shape[0]
    _check(weight, 'weight', src.dtype, src.device)
    if bias is not None:
        _check(bias, 'bias', src.dtype, src.device)
        if bias.shape != (c_out, ):
            raise ValueError(f'bias must have shape ({c_out},), got '
                             f'{tuple(bias.shape)}')
    for name, t in (('residual', residual), ('out', out)):
        if t is None:
            continue
        _check(t, name, src.dtype, src.device)
        if t.shape != (R, c_out):
            raise ValueError(f'{name} must have shape ({R}, {c_out}), got '
                             f'{tuple(t.shape)}')
    if index is not None:
        if index.dtype not in _INDEX_DTYPES or index.device != src.device:
            raise ValueError(f'index must be int32 or int64 on {src.device}, '
                             f'got {index.dtype} on {index.device}')


def _forward(src, index, weight, bias, residual, relu, out, interpret,
             config) -> KernelInfo:
    """Write ``out`` with the kernel (checked operands, no autograd)."""
    w = weight
    if index is None:  # rows_linear: weight (C_out, K)
        if w.stride(1) != 1 and w.shape[1] > 1:
            w = w.contiguous()
        k, w_strides = 1, (w.stride(0), w.stride(1), 0, 0)
    else:
        if w.stride(1) != 1 and w.shape[1] > 1:
            # tiles read C_in-contiguous weights (the channels-last
            # layout sparse inference keeps its folded weights in)
            w = w.contiguous(memory_format=torch.channels_last)
        k, w_strides = w.shape[-1], w.stride()
    return _launch(src, index, w, k, w_strides, bias, residual, relu, out,
                   interpret, config)


class _GatherLinear(torch.autograd.Function):
    """Forward: the kernel; backward: plain torch (scatter-add and im2col
    matmul), for the gradients sparse execution keeps (DESIGN I3)."""

    @staticmethod
    def forward(ctx, src, index, weight, bias, residual, relu, out,
                interpret, config):
        _forward(src, index, weight, bias, residual, relu, out, interpret,
                 config)
        ctx.relu = relu
        ctx.save_for_backward(src, index, weight, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        src, index, weight, result = ctx.saved_tensors
        if ctx.relu:
            grad = grad * (result > 0)
        c_out = weight.shape[0]
        taps = 1 if index is None else weight.shape[2] * weight.shape[3]
        w2d = weight if index is None else \
            weight.permute(0, 2, 3, 1).reshape(c_out, -1)
        g_src = g_w = None
        if index is not None:  # row M, past the source, is the zero row
            src = torch.cat([src, src.new_zeros(1, src.shape[1])])
        if ctx.needs_input_grad[0]:
            cols = grad @ w2d  # (R, T * C)
            if index is None:
                g_src = cols
            else:
                g_src = torch.zeros_like(src).index_add_(
                    0, index.long(), cols.view(-1, src.shape[1]))[:-1]
        if ctx.needs_input_grad[2]:
            cols = src if index is None else \
                src.index_select(0, index.long()).view(-1, taps *
                                                       src.shape[1])
            g_w = (grad.t() @ cols)
            if index is not None:
                g_w = g_w.view(c_out, weight.shape[2], weight.shape[3],
                               -1).permute(0, 3, 1, 2)
        g_b = grad.sum(0) if ctx.needs_input_grad[3] else None
        g_res = grad if ctx.needs_input_grad[4] else None
        return g_src, None, g_w, g_b, g_res, None, None, None, None


def _run(src, index, weight, bias, residual, relu, out, interpret, config,
         R):
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (src, weight, bias, residual))
    if not grad:
        if out is None:
            out = src.new_empty(R, weight.shape[0])
        return _GatherLinear.forward(_NoCtx(), src, index, weight, bias,
                                     residual, relu, out, interpret, config)
    if out is not None:
        raise ValueError('out= is not supported when autograd records the '
                         'call (the output would be written in place)')
    out = src.new_empty(R, weight.shape[0])
    return _GatherLinear.apply(src, index, weight, bias, residual, relu, out,
                               interpret, config)


class _NoCtx:
    """Stands for autograd's ctx when no graph is recorded."""

    def save_for_backward(self, *tensors):
        pass


def gather_linear(src: Tensor, index: Tensor, weight: Tensor,
                  bias: Optional[Tensor] = None, *,
                  residual: Optional[Tensor] = None, relu: bool = False,
                  out: Optional[Tensor] = None, interpret: bool = False,
                  config: Optional[Config] = None) -> Tensor:
    """Selective (sparse) convolution as one implicit GEMM: row r of the
    output is ``relu(sum_t src[index[r, t]] @ W_t + bias + residual[r])``.

    Args:
        src (Tensor): (M, C) source rows (float16, bfloat16 or float32).
        index (Tensor): (R * T,) flat (R, T) rows of ``src`` per tap
            (int64 or int32), as built by :class:`~mmselds.ops.CellMask`;
            M (past the M rows of ``src``) reads zeros.
        weight (Tensor): (C_out, C, k, k), T = k * k taps, row-major; any
            strides (the channels-last copy of sparse inference is read
            in place).
        bias (Tensor, optional): (C_out,).
        residual (Tensor, optional): (R, C_out) rows added after the bias.
        relu (bool): apply ReLU last. Default: False.
        out (Tensor, optional): (R, C_out) buffer to write.
        interpret (bool): run Triton's interpreter on CPU tensors instead
            of the compiled kernel on CUDA tensors. Default: False.
        config (Config, optional): tile sizes; default
            :func:`default_config`.
    Returns:
        Tensor: (R, C_out), the dtype of ``src``.
    """
    R = _output_rows(src, index, weight)
    _prepare(src, index, weight, bias, residual, out, R, interpret)
    return _run(src, index, weight, bias, residual, relu, out, interpret,
                config, R)


def _output_rows(src: Tensor, index: Optional[Tensor],
                 weight: Tensor) -> int:
    """R, the output rows of :func:`gather_linear` (``index`` given) or
    :func:`rows_linear`, after checking the weight and index shapes."""
    if index is None:
        if weight.dim() != 2 or weight.shape[1] != src.shape[-1]:
            raise ValueError(f'weight must be (C_out, {src.shape[-1]}), '
                             f'got {tuple(weight.shape)}')
        return src.shape[0]
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError('weight must be a (C_out, C_in, k, k) tensor, got '
                         f'{tuple(weight.shape)}')
    taps = weight.shape[2] * weight.shape[3]
    if weight.shape[1] != src.shape[-1]:
        raise ValueError(f'weight expects {weight.shape[1]} input channels, '
                         f'the source rows have {src.shape[-1]}')
    if index.dim() != 1 or index.numel() % taps:
        raise ValueError(f'index must be flat (R * {taps},), got '
                         f'{tuple(index.shape)}')
    return index.numel() // taps


def rows_linear(rows: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                *, residual: Optional[Tensor] = None, relu: bool = False,
                out: Optional[Tensor] = None, interpret: bool = False,
                config: Optional[Config] = None) -> Tensor:
    """The matmul of a sparse 1x1 conv:
    ``relu(rows @ weight^T + bias + residual)`` -> (M, C_out).

    Args:
        rows (Tensor): (M, K) rows (float16, bfloat16 or float32).
        weight (Tensor): (C_out, K), any strides.
        bias, residual, relu, out, interpret, config: as in
            :func:`gather_linear`.
    """
    R = _output_rows(rows, None, weight)
    _prepare(rows, None, weight, bias, residual, out, R, interpret)
    return _run(rows, None, weight, bias, residual, relu, out, interpret,
                config, R)


def kernel_info(src: Tensor, index: Optional[Tensor], weight: Tensor,
                bias: Optional[Tensor] = None, *,
                residual: Optional[Tensor] = None, relu: bool = False,
                interpret: bool = False,
                config: Optional[Config] = None) -> KernelInfo:
    """Run :func:`gather_linear` (``index`` given) or :func:`rows_linear`
    (``index`` None, ``weight`` (C_out, K)) once and say what was launched:
    the tile configuration and, for a compiled kernel, its registers and
    spills per thread and shared memory per program (for benchmarks: a
    configuration that spills or leaves one program per SM shows here)."""
    R = _output_rows(src, index, weight)
    _prepare(src, index, weight, bias, residual, None, R, interpret)
    with torch.no_grad():
        return _forward(src, index, weight, bias, residual, relu,
                        src.new_empty(R, weight.shape[0]), interpret, config)
