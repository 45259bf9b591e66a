"""The Triton backend (GPU fast path) against the pure-PyTorch reference.

Without a GPU the kernels run on CPU tensors in Triton's interpreter
(``build_backend(interpret=True)`` / ``interpret=True``; no environment
variable needed), on tiny shapes; the CUDA tests at the end run the
compiled kernels on bigger ones where a GPU exists. Every output buffer is
filled with NaN before the kernel runs, so an element the kernel does not
write fails the comparison. Without Triton installed only the tests of the
import guard run; the others skip.
"""
import dataclasses
import os
import os.path as osp
import re
import subprocess
import sys
import warnings

import pytest
import torch

from mmselds.ops import (CellMask, MixedFeature, SelectivePooling, kernels,
                         random_cell_mask, selective_conv2d,
                         selective_entrance_conv2d)
from mmselds.ops.kernels import torch_ref, triton_backend
from tests.test_ops.test_kernels import registered

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HAS_TRITON = triton_backend.triton_installed()
needs_triton = pytest.mark.skipif(not HAS_TRITON,
                                  reason='triton is not installed')
needs_cuda = pytest.mark.skipif(
    not (HAS_TRITON and torch.cuda.is_available()),
    reason='needs CUDA and triton')

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# float32 accumulation: what is left is the rounding of the output (half an
# ulp: 6e-8, 4.9e-4 and 3.9e-3 of the value) and float32 sums
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DILATIONS = (1, 2, 4, 6, 12, 18, 24, 36)
MASKS = ('all_high', 'one_low', 'half', 'one_high', 'all_low')


def tk():
    from mmselds.ops.kernels import triton_kernels
    return triton_kernels


def make_mask(kind, n, h, w, gen):
    """(n, 1, h, w) cell mask, 1 = down-sampled: density 1 (all cells at
    full resolution), one down-sampled cell, 0.5, one full-resolution
    cell, density 0 (all down-sampled)."""
    if kind == 'half':
        return random_cell_mask(n, h, w, 0.5, gen)
    mask = torch.full((n, 1, h, w), float(kind in ('all_low', 'one_high')))
    if kind.startswith('one'):
        mask[n - 1, 0, h // 2, w // 3] = 1 - mask[n - 1, 0, h // 2, w // 3]
    return mask


def conv_case(n, c_in, c_out, dilation, mask_kind, dtype, seed,
              entrance=False, h=4, w=6, in_place=False):
    """Source rows, index table, weight, bias of one selective 3x3 conv in
    ``dtype`` (weights scaled for outputs of unit scale): the source
    ``cat([rows, zero, pooled])`` of ``conv_index``, with ``in_place`` the
    rows alone (``conv_index(pooled_rows=False)``; the zero row is one past
    them), with ``entrance`` the raster rows of the entrance (likewise)."""
    gen = torch.Generator().manual_seed(seed)
    cells = CellMask(make_mask(mask_kind, n, h, w, gen), 'sparse')
    if entrance:
        rows = n * 4 * h * w
        index = cells.entrance_index(dilation)
    elif in_place:
        rows = cells.num_rows
        index = cells.conv_index(dilation, pooled_rows=False)
    else:
        rows = cells.num_rows + 1 + cells.num_high
        index = cells.conv_index(dilation)
    src = torch.randn(rows, c_in, generator=gen)
    if not (entrance or in_place):
        src[cells.num_rows] = 0  # the zero row
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen) / (3 * c_in**.5)
    bias = torch.randn(c_out, generator=gen)
    return [t.to(dtype) for t in (src, weight, bias)] + [index]


def nan_out(rows, cols, dtype):
    return torch.full((rows, cols), float('nan'), dtype=dtype)


def check(got, expect, dtype):
    """``got`` (the kernel's dtype) against the float64 reference of the
    same rounded inputs; NaN fails."""
    assert torch.isfinite(got).all(), 'unwritten (NaN) or infinite output'
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), expect.double(), atol=tol,
                               rtol=tol)


def ref_gather(src, index, weight, bias, residual=None, relu=False):
    """torch_ref's gather_linear in float64 (+ the epilogue)."""
    d = torch.float64
    out = torch_ref.gather_linear(src.to(d), index, weight.to(d),
                                  None if bias is None else bias.to(d))
    if residual is not None:
        out = out + residual.to(d)
    return out.relu() if relu else out


def run_gather(src, index, weight, bias, **kw):
    R = index.numel() // (weight.shape[2] * weight.shape[3])
    out = nan_out(R, weight.shape[0], src.dtype)
    got = tk().gather_linear(src, index, weight, bias, out=out,
                             interpret=True, **kw)
    assert got.data_ptr() == out.data_ptr()
    return got


# --------------------------------------------- the interpreter on CPU
@needs_triton
@pytest.mark.parametrize('table', ['pooled', 'in_place', 'entrance'])
@pytest.mark.parametrize('dilation', DILATIONS)
def test_every_dilation_through_the_index_tables(dilation, table):
    """3x3 conv of every dilation the models use (backbone 1, 2, 4; ASPP
    6, 12, 18 at OS16 and 12, 24, 36 at OS8), through CellMask.conv_index
    (both layouts) and entrance_index, on a mixed mask of 3 images; the
    last two read the zero row one past the source."""
    src, weight, bias, index = conv_case(3, 17, 5, dilation, 'half',
                                         torch.float32, seed=dilation,
                                         entrance=table == 'entrance',
                                         in_place=table == 'in_place')
    if table != 'pooled':
        assert int(index.max()) == len(src)  # padding is read
    check(run_gather(src, index, weight, bias),
          ref_gather(src, index, weight, bias), torch.float32)


@needs_triton
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('n', [1, 3])
@pytest.mark.parametrize('mask_kind', MASKS)
def test_gather_linear_masks_batches_dtypes(mask_kind, n, dtype):
    src, weight, bias, index = conv_case(n, 3, 17, 2, mask_kind, dtype,
                                         seed=n)
    got = run_gather(src, index, weight, bias)
    check(got, ref_gather(src, index, weight, bias), dtype)
    # the reference in the same dtype agrees within the same bound
    same = torch_ref.gather_linear(src, index, weight, bias)
    torch.testing.assert_close(got.double(), same.double(),
                               atol=2 * TOL[dtype], rtol=2 * TOL[dtype])


@needs_triton
@pytest.mark.parametrize('c_in,c_out', [(3, 17), (17, 3), (1, 1), (24, 33)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16], ids=str)
def test_odd_channels_and_several_tiles(c_in, c_out, dtype):
    """16 x 16 x 16 tiles: several row, column and channel blocks, ragged
    at every edge, grouped tile order."""
    src, weight, bias, index = conv_case(3, c_in, c_out, 2, 'half', dtype,
                                         seed=c_in, h=2, w=3)
    config = tk().Config(16, 16, 16, group_m=2)
    got = run_gather(src, index, weight, bias, config=config)
    check(got, ref_gather(src, index, weight, bias), dtype)


@needs_triton
@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_epilogue_bias_residual_relu(k, dtype):
    """Bias, residual add and ReLU fused; absent bias; any weight layout
    (channels-last, as sparse inference keeps it, and contiguous); int32
    index tables."""
    gen = torch.Generator().manual_seed(k)
    src = torch.randn(30, 17, generator=gen).to(dtype)
    index = torch.randint(0, 30, (23 * k * k, ), generator=gen)
    weight = (torch.randn(9, 17, k, k, generator=gen) / 6).to(dtype)
    bias = torch.randn(9, generator=gen).to(dtype)
    res = torch.randn(23, 9, generator=gen).to(dtype)
    for w in (weight, weight.contiguous(memory_format=torch.channels_last)):
        got = run_gather(src, index, w, bias, residual=res, relu=True)
        check(got, ref_gather(src, index, w, bias, res, True), dtype)
    got = run_gather(src, index.int(), weight, None, residual=res)
    check(got, ref_gather(src, index, weight, None, res), dtype)


@needs_triton
def test_launch_arithmetic_equals_tritons():
    """The host's grid and tile arithmetic, in plain Python (Triton's
    cdiv / next_power_of_2 cost ~4 us a call), equals Triton's."""
    import triton
    for n in list(range(0, 300)) + [1023, 1024, 1025, 32768, 32769]:
        for lo, hi in ((16, 64), (1, 1 << 20), (16, 128)):
            assert tk()._pow2(n, lo, hi) == max(
                lo, min(hi, triton.next_power_of_2(max(n, 1))))
        for b in (1, 16, 32, 64, 128):
            assert tk()._cdiv(n, b) == triton.cdiv(n, b)


@needs_triton
@pytest.mark.parametrize('device', ['interpreter',
                                    pytest.param('cuda', marks=needs_cuda)])
@pytest.mark.parametrize('k', [1, 3])
def test_nan_propagates_through_the_relu(k, device):
    """A NaN source value makes NaN every output row that reads it, after
    the fused ReLU too, as torch's ReLU keeps NaN (the dense model's
    logits show it); rows that do not read it stay finite. Under the
    interpreter and, on a GPU, compiled."""
    gen = torch.Generator().manual_seed(k)
    src = torch.randn(30, 17, generator=gen)
    src[4, 3] = float('nan')
    index = torch.randint(0, 30, (23 * k * k, ), generator=gen)
    index[k * k * 2] = 4  # row 2 reads it
    weight = torch.randn(9, 17, k, k, generator=gen) / 6
    reads = (index.view(23, k * k) == 4).any(1)
    assert 0 < reads.sum() < 23
    dev = 'cuda' if device == 'cuda' else 'cpu'
    src, index, weight = (t.to(dev) for t in (src, index, weight))
    for res, relu in ((None, True), (torch.randn(23, 9, generator=gen),
                                     True), (None, False)):
        out = torch.full((23, 9), float('nan'), device=dev)
        got = tk().gather_linear(
            src, index, weight, None, out=out, relu=relu,
            residual=None if res is None else res.to(dev),
            interpret=device != 'cuda').cpu()
        assert torch.equal(got.isnan().all(1), reads)
        assert torch.isfinite(got[~reads]).all()


@needs_triton
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_rows_linear(dtype):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(37, 17, generator=gen).to(dtype)
    weight = (torch.randn(5, 17, generator=gen) / 4).to(dtype)
    bias = torch.randn(5, generator=gen).to(dtype)
    res = torch.randn(37, 5, generator=gen).to(dtype)
    d = torch.float64
    for b, r, relu in ((bias, None, False), (None, None, False),
                       (bias, res, True)):
        out = nan_out(37, 5, dtype)
        got = tk().rows_linear(rows, weight, b, residual=r, relu=relu,
                               out=out, interpret=True)
        expect = torch_ref.rows_linear(rows.to(d), weight.to(d),
                                       None if b is None else b.to(d))
        if r is not None:
            expect = expect + r.to(d)
        check(got, expect.relu() if relu else expect, dtype)
    # a transposed (column-major) weight
    wt = weight.t().contiguous().t()
    check(tk().rows_linear(rows, wt, bias, interpret=True),
          torch_ref.rows_linear(rows.to(d), weight.to(d), bias.to(d)),
          dtype)


@needs_triton
def test_empty_rows():
    src = torch.randn(4, 3)
    w = torch.randn(5, 3, 3, 3)
    index = torch.zeros(0, dtype=torch.long)
    assert tk().gather_linear(src, index, w, interpret=True).shape == (0, 5)
    assert tk().rows_linear(src[:0], w[:, :, 0, 0],
                            interpret=True).shape == (0, 5)


@needs_triton
def test_gradients_match_the_reference():
    """Autograd through the kernels (backward in torch) equals the
    reference's gradients, epilogue included."""
    gen = torch.Generator().manual_seed(1)
    src, weight, bias, index = conv_case(2, 5, 4, 2, 'half', torch.float32,
                                         seed=3)
    res = torch.randn(index.numel() // 9, 4, generator=gen)
    grads = []
    for fn in (lambda *a: tk().gather_linear(*a, residual=r, relu=True,
                                             interpret=True),
               lambda *a: (torch_ref.gather_linear(*a) + r).relu()):
        s, w, b, r = (t.clone().requires_grad_() for t in
                      (src, weight, bias, res))
        out = fn(s, index, w, b)
        out.backward(torch.randn(out.shape, generator=gen.manual_seed(2)))
        grads.append([out] + [t.grad for t in (s, w, b, r)])
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    rows, w1 = src.clone().requires_grad_(), weight[:, :, 1, 1].clone()
    w1.requires_grad_()
    tk().rows_linear(rows, w1, interpret=True).sum().backward()
    g = [rows.grad, w1.grad]
    rows.grad = w1.grad = None
    torch_ref.rows_linear(rows, w1).sum().backward()
    for a, e in zip(g, [rows.grad, w1.grad]):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@needs_triton
def test_unsupported_device_and_dtype_are_clear_errors():
    src, weight, bias, index = conv_case(1, 3, 4, 2, 'half', torch.float32,
                                         seed=0)
    with pytest.raises(NotImplementedError, match=r'CUDA tensors.*cpu'):
        tk().gather_linear(src, index, weight, bias)  # compiled: CUDA only
    with pytest.raises(NotImplementedError, match=r'CUDA tensors.*cpu'):
        tk().rows_linear(src, weight[:, :, 0, 0])
    d = torch.float64
    with pytest.raises(NotImplementedError,
                       match=r'torch\.float64.*bfloat16, float16, float32'):
        tk().gather_linear(src.to(d), index, weight.to(d), interpret=True)
    with pytest.raises(ValueError, match='weight is torch.float16'):
        tk().gather_linear(src, index, weight.half(), interpret=True)
    with pytest.raises(ValueError, match='index must be int32 or int64'):
        tk().gather_linear(src, index.float(), weight, interpret=True)
    with pytest.raises(ValueError, match=r'residual must have shape'):
        tk().gather_linear(src, index, weight, residual=src,
                           interpret=True)
    # through the dispatch: float64 runs the reference's kernels
    with registered('cpu', triton_backend.build_backend(interpret=True)):
        got = kernels.gather_linear(src.to(d), index, weight.to(d))
        assert kernels.backend_for(src.to(d)).name == 'triton-interpreter'
        with pytest.raises(NotImplementedError, match='int32'):
            kernels.backend_for(src.int())
    torch.testing.assert_close(
        got, torch_ref.gather_linear(src.to(d), index, weight.to(d)),
        rtol=0, atol=0)


@needs_triton
def test_kernel_info_says_what_was_launched():
    """kernel_info runs the kernel once and returns its configuration (the
    default one of gather / plain matmul unless one is given); the
    interpreter compiles nothing, so it reports no registers."""
    src, weight, bias, index = conv_case(2, 5, 7, 2, 'half', torch.float32,
                                         seed=3)
    R = index.numel() // 9
    info = tk().kernel_info(src, index, weight, bias, interpret=True)
    assert info.config == tk().default_config(R, 5, 7, torch.float32, True,
                                              gather=True)
    assert (info.registers, info.spills, info.shared) == (None, None, None)
    cfg = tk().Config(16, 16, 16, num_stages=1)
    assert tk().kernel_info(src, index, weight, interpret=True,
                            config=cfg).config == cfg
    w1 = weight[:, :, 0, 0]
    assert tk().kernel_info(src, None, w1, interpret=True).config == \
        tk().default_config(len(src), 5, 7, torch.float32, True)
    assert tk().kernel_info(src[:0], None, w1, interpret=True).config is None
    with pytest.raises(ValueError, match=r'weight must be \(C_out, 5\)'):
        tk().kernel_info(src, None, weight, interpret=True)
    with pytest.raises(ValueError, match='index must be flat'):
        tk().kernel_info(src, index[:-1], weight, interpret=True)


COMPILE_CASES = {
    # name: (dtype, 3x3 gather?, C_in, C_out, rows, epilogue, tf32)
    'fp16-3x3-r101-stage3-epilogue': ('fp16', True, 256, 256, 32768, True,
                                      False),
    'fp32-1x1-tf32': ('fp32', False, 1024, 256, 4096, False, True),
    'fp32-3x3-tf32-r101-stage4-epilogue': ('fp32', True, 512, 512, 16384,
                                           True, True),
    'bf16-3x3-odd-channels': ('bf16', True, 17, 5, 100, False, False),
}


# the GPUs the kernels are compiled for here, with the shared memory one
# block may use (CUDA's opt-in maximum): A40 (the clusters the method was
# developed on) and H100 / H200
GPU_TARGETS = {'sm86-A40': (86, 99 * 1024), 'sm90-H100': (90, 227 * 1024)}


def buffers(ttgir, rows, cols):
    """The buffer counts of the (rows, cols) tiles kept in shared memory."""
    return {int(n) for n in re.findall(
        rf'memdesc<(\d+)x{rows}x{cols}x(?:f16|bf16|f32)', ttgir)}


def compile_case(case, arch):
    """(kernel, config, even channels) of COMPILE_CASES[case] compiled for
    sm_<arch> with no GPU, as a launch would: the tile sizes of
    default_config and the specialisations of a launch on contiguous rows
    and channels-last weights (strides of 1, 16-divisible pointers and
    strides)."""
    import inspect

    import triton
    dtype, gather, c_in, c_out, rows, epilogue, tf32 = COMPILE_CASES[case]
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        fn = triton.jit(tk()._selective_gemm)
        names = list(inspect.signature(tk()._selective_gemm).parameters)
        cfg = tk().default_config(rows, c_in, c_out, {
            'fp16': torch.float16, 'bf16': torch.bfloat16,
            'fp32': torch.float32}[dtype], gather=gather)
        ones = {'stride_sk', 'stride_wk', 'stride_on', 'stride_rn'}
        consts = dict(
            C_IN=c_in, K_BLOCKS=-(-c_in // cfg.block_k),
            EVEN_K=c_in % cfg.block_k == 0, KSIZE=3 if gather else 1,
            TAPS=9 if gather else 1,
            HAS_INDEX=gather, HAS_BIAS=True, HAS_RES=epilogue,
            RELU=epilogue, UPCAST=False, PRECISION='tf32' if tf32 else
            'ieee', BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            **{n: 1 for n in ones})
        sig = {n: '*i64' if n == 'index_ptr' else '*' + dtype
               for n in names[:6]}
        sig.update({n: 'i32' for n in names[6:18]})
        sig.update({n: 'constexpr' for n in consts})
        even = c_in % 16 == 0 and c_out % 16 == 0
        # what a launch specialises: ints divisible by 16 (not R, the
        # active rows) and the pointers
        attrs = {(names.index(n), ): [['tt.divisibility', 16]]
                 for n in names[:18]
                 if n not in ones and n != 'R'
                 and (even or n.endswith('_ptr'))}
        src = ASTSource(fn, sig, {(names.index(k), ): v
                                  for k, v in consts.items()}, attrs)
        target = GPUTarget('cuda', arch, 32)
    except (ImportError, TypeError, AttributeError) as err:
        pytest.skip(f'this Triton compiles differently: {err!r}')
    kernel = triton.compile(src, target=target, options=dict(
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        enable_fp_fusion=True))
    return kernel, cfg, even


@needs_triton
@pytest.mark.parametrize('target', sorted(GPU_TARGETS))
@pytest.mark.parametrize('case', sorted(COMPILE_CASES))
def test_kernel_compiles_for_gpus(case, target):
    """The compiled path, which the interpreter does not run: the kernel
    compiles to a cubin for sm_86 (A40) and sm_90 (H100 / H200) with no
    GPU (see compile_case); it fits the shared memory of a block on that
    GPU, Triton pipelines the tile loads with two or more buffers a tile
    (async copies; one buffer would make each tile's loads wait for the
    previous product), the products run on the tensor cores (asynchronous
    wgmma on sm_90), and the epilogue stores the output rows and loads the
    residual in vectors, not one 16-bit element at a time; the ReLU keeps
    NaN (max.NaN)."""
    arch, shared_limit = GPU_TARGETS[target]
    kernel, cfg, even = compile_case(case, arch)
    assert kernel.asm.get('cubin')
    assert 0 < kernel.metadata.shared <= shared_limit
    # what kernel_info reports of it (registers: once loaded on a GPU)
    assert tk()._info(cfg, kernel) == (cfg, None, None,
                                       kernel.metadata.shared)
    # the products run on the tensor cores: mma.sync on sm_86, wgmma on
    # sm_90 (not mma.sync at a fraction of Hopper's rate)
    ptx = kernel.asm['ptx']
    if arch >= 90:
        assert 'wgmma.mma_async' in ptx and 'mma.sync' not in ptx
    else:
        assert 'mma.sync.aligned' in ptx
    if COMPILE_CASES[case][5]:  # the fused ReLU keeps NaN, one instruction
        assert 'max.NaN.f32' in ptx and not re.search(r'max\.f32', ptx)
    if even:
        ttgir = kernel.asm['ttgir']
        assert 'async_copy' in ttgir
        source_tiles = buffers(ttgir, cfg.block_m, cfg.block_k)
        weight_tiles = buffers(ttgir, cfg.block_k, cfg.block_n)
        assert source_tiles and min(source_tiles) >= 2, source_tiles
        assert weight_tiles and min(weight_tiles) >= 2, weight_tiles
        # the epilogue's output rows (and residual rows) move in vectors
        stores = re.findall(r'st\.global[.a-z0-9]*', kernel.asm['ptx'])
        loads = re.findall(r'ld\.global[.a-z0-9]*', kernel.asm['ptx'])
        assert stores and all('.v' in op for op in stores), set(stores)
        assert all('.b16' not in op for op in loads), set(loads)
        if arch >= 90:  # asynchronous: a product overlaps the next one
            # (the kernel waits for all but the newest wgmma group)
            assert re.search(r'wgmma\.wait_group\.sync\.aligned\s+1\b',
                             ptx)


@needs_triton
@pytest.mark.parametrize('arch', [75, 80])
def test_tensor_core_capability_is_where_triton_uses_them(arch):
    """Why the backend leaves GPUs below TENSOR_CORE_CAPABILITY (8.0) to
    the reference: there Triton compiles the kernel's products to FMA
    loops (sm_75, T4), from it to tensor-core mma (sm_80, A100). Should a
    Triton release change this, the threshold must follow."""
    kernel, _, _ = compile_case('fp16-3x3-r101-stage3-epilogue', arch)
    ptx = kernel.asm['ptx']
    has_mma = 'mma.sync' in ptx or 'wgmma' in ptx
    assert has_mma == ((arch // 10, arch % 10)
                       >= triton_backend.TENSOR_CORE_CAPABILITY)
    if not has_mma:
        assert 'fma.rn.f32' in ptx


def nan_filled(backend):
    """``backend`` writing into NaN-filled output buffers."""
    def gather(src, index, weight, bias=None, **epilogue):
        out = nan_out(index.numel() // weight[0, 0].numel(),
                      weight.shape[0], src.dtype)
        return backend.gather_linear(src, index, weight, bias, out=out,
                                     **epilogue)

    def rows(x, weight, bias=None, **epilogue):
        return backend.rows_linear(
            x, weight, bias, out=nan_out(len(x), len(weight), x.dtype),
            **epilogue)
    return dataclasses.replace(backend, gather_linear=gather,
                               rows_linear=rows)


def ops_case(seed):
    """(generator, x, 3x3 and 1x1 weights, bias, mask) of the end-to-end op
    tests: a 2 x 6 x 8 x 12 input, 7 output channels, density 0.5."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, 8, 12, generator=gen)
    w3 = torch.randn(7, 6, 3, 3, generator=gen) / 7
    w1 = torch.randn(7, 6, 1, 1, generator=gen) / 3
    b = torch.randn(7, generator=gen)
    return gen, x, w3, w1, b, random_cell_mask(2, 4, 6, 0.5, gen)


@needs_triton
@pytest.mark.parametrize('mode', ['stride', 'adaptive'])
def test_selective_ops_with_the_triton_backend_equal_dense(mode):
    """End to end: with the Triton backend registered for 'cpu', the
    sparse selective ops (3x3 convs of rates 2 and 12, 1x1, the stage
    entrance) equal the dense emulation on a random mask; each kernel is
    called, so the registry routes to it."""
    gen, x, w3, w1, b, mask = ops_case(5)
    pool = SelectivePooling(mode, channels=6)
    if mode == 'adaptive':
        with torch.no_grad():
            pool.logits.normal_(generator=gen)

    def run(execution):
        cells = CellMask(mask, execution)
        feat = MixedFeature.from_dense(x, cells, pool)
        return [selective_conv2d(feat, w3, b, 2).densify(),
                selective_conv2d(feat, w3, b, 12).densify(),
                selective_conv2d(feat, w1, b).densify(),
                selective_entrance_conv2d(x, cells, w3, b, 2).densify()]

    dense = run('dense')
    backend = triton_backend.build_backend(interpret=True)
    calls = []
    spied = nan_filled(dataclasses.replace(
        backend,
        gather_linear=lambda *a, **k: calls.append('g') or
        backend.gather_linear(*a, **k),
        rows_linear=lambda *a, **k: calls.append('r') or
        backend.rows_linear(*a, **k)))
    with registered('cpu', spied):
        assert kernels.backend_for(x).name == 'triton-interpreter'
        with torch.no_grad():  # inference (out= buffers need it)
            sparse = run('sparse')
    assert kernels.backend_for(x) is kernels.TORCH_REF
    assert sorted(calls) == ['g', 'g', 'g', 'r']
    for s, d in zip(sparse, dense):
        torch.testing.assert_close(s, d, atol=1e-5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_triton_backend_under_autocast(dtype):
    """AMP inference: under ``torch.autocast`` float32 operands reach the
    Triton kernels cast to the autocast dtype (the kernels take one dtype),
    and the result equals the reference backend's under autocast."""
    gen, x, w3, w1, b, mask = ops_case(6)

    def run():
        cells = CellMask(mask, 'sparse')
        feat = MixedFeature.from_dense(x, cells)
        with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
            out = selective_conv2d(feat, w3, b, 2)
            return [out, selective_conv2d(feat, w1, b, residual=out,
                                          relu=True),
                    selective_entrance_conv2d(x, cells, w3, b, 4)]

    want = run()
    with registered('cpu', nan_filled(
            triton_backend.build_backend(interpret=True))):
        got = run()
    for g, e in zip(got, want):
        assert g.dtype == e.dtype == dtype
        assert torch.isfinite(g.data).all(), 'unwritten (NaN) output'
        tol = 2 * TOL[dtype]  # both round to the autocast dtype
        torch.testing.assert_close(g.densify().double(),
                                   e.densify().double(), atol=tol, rtol=tol)


@needs_triton
def test_sparse_gradients_through_the_ops_equal_the_reference():
    """Input and weight gradients of sparse execution (DESIGN I3) with the
    Triton backend equal those of the reference backend."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 4, 6, generator=gen)
    weights = [torch.randn(5, 4, 3, 3, generator=gen) / 6,
               torch.randn(5, 5, 3, 3, generator=gen) / 7,
               torch.randn(3, 5, 1, 1, generator=gen) / 2]
    mask = random_cell_mask(2, 2, 3, 0.5, gen)

    def grads():
        xs, *ws = (t.clone().requires_grad_() for t in [x] + weights)
        cells = CellMask(mask, 'sparse')
        feat = selective_entrance_conv2d(xs, cells, ws[0], dilation=2)
        feat = selective_conv2d(feat.relu(), ws[1], dilation=4)
        feat = selective_conv2d(feat, ws[2])
        feat.densify().square().sum().backward()
        return [xs.grad] + [w.grad for w in ws]

    want = grads()
    with registered('cpu', triton_backend.build_backend(interpret=True)):
        got = grads()
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


# ------------------------------------------------ registration / guard
def test_cuda_backend_only_with_cuda_and_triton(monkeypatch):
    expected = torch.cuda.is_available() and HAS_TRITON
    assert triton_backend.available() == expected
    cuda = kernels.registered_backends()['cuda']
    assert cuda.name == ('triton' if expected else 'torch_ref')
    monkeypatch.setenv('MMSELDS_TRITON', '0')
    assert not triton_backend.available()
    assert triton_backend.cuda_backend_if_available() is None
    monkeypatch.setenv('MMSELDS_TRITON', '1')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert triton_backend.cuda_backend_if_available() is None


class _OnGPU:
    """Stands for a float16 tensor on cuda:0 (no GPU needed)."""
    device = torch.device('cuda', 0)
    dtype = torch.float16


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch.cuda answering for one GPU of the compute capability put in
    the returned dict; the per-GPU decisions cleared before and after."""
    gpu = {'capability': (7, 5), 'name': 'Tesla T4'}
    monkeypatch.setattr(torch.cuda, 'get_device_capability',
                        lambda index=None: gpu['capability'])
    monkeypatch.setattr(torch.cuda, 'get_device_name',
                        lambda index=None: gpu['name'])
    triton_backend._capable.cache_clear()
    yield gpu
    triton_backend._capable.cache_clear()


def test_gpus_below_tensor_core_capability_take_the_reference(fake_gpu):
    """On a GPU where Triton's matmul has no tensor cores (below 8.0) the
    backend runs the reference's kernels and says so once per GPU;
    min_capability=None keeps Triton; 8.0 and newer run Triton; float64
    always runs the reference."""
    use = triton_backend._use_triton
    with pytest.warns(UserWarning, match=r'Tesla T4 \(cuda:0\) has compute '
                      r'capability 7\.5; the Triton kernels need 8\.0.*'
                      'reference kernels'):
        assert not use(_OnGPU(), False, (8, 0))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once per GPU
        assert not use(_OnGPU(), False, (8, 0))
        assert use(_OnGPU(), False, None)
        assert use(_OnGPU(), True, (8, 0))  # the interpreter: CPU tensors
        fake_gpu.update(capability=(8, 6), name='NVIDIA A40')
        triton_backend._capable.cache_clear()
        assert use(_OnGPU(), False, (8, 0))
        fake_gpu['capability'] = (9, 0)
        triton_backend._capable.cache_clear()
        assert use(_OnGPU(), False, (8, 0))
        assert not use(torch.zeros(1, dtype=torch.float64), False, None)
    assert triton_backend.TENSOR_CORE_CAPABILITY == (8, 0)


def test_backend_routes_to_the_reference_where_triton_is_not_used(
        monkeypatch):
    """What a compiled backend does with tensors _use_triton refuses: the
    reference's kernels, epilogue included (here CPU tensors, which the
    compiled kernels would reject)."""
    backend = triton_backend.build_backend()
    src, weight, bias, index = conv_case(2, 5, 7, 2, 'half', torch.float32,
                                         seed=1)
    w1 = weight[:, :, 1, 1]
    res = torch.randn(index.numel() // 9, 7)
    if HAS_TRITON:
        with pytest.raises(NotImplementedError, match='CUDA tensors'):
            backend.gather_linear(src, index, weight, bias)
    monkeypatch.setattr(triton_backend, '_use_triton', lambda *a: False)
    got = backend.gather_linear((src[:, :2], src[:, 2:]), index, weight,
                                bias, residual=res, relu=True)
    want = torch_ref.gather_linear(src, index, weight, bias, residual=res,
                                   relu=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got = backend.rows_linear(src, w1, bias, relu=True)
    torch.testing.assert_close(
        got, torch_ref.rows_linear(src, w1, bias, relu=True), rtol=0, atol=0)


SCRIPT = r'''
import sys

if sys.argv[1:] == ['block']:
    class Block:  # as if triton were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] == 'triton':
                raise ModuleNotFoundError("No module named 'triton'",
                                          name='triton')

    sys.meta_path.insert(0, Block())
import torch
torch.cuda.is_available = lambda: True  # as on a GPU machine
from mmselds.ops import CellMask, MixedFeature, kernels, selective_conv2d
cells = CellMask(torch.tensor([[[[1., 0.], [0., 1.]]]]), 'sparse')
selective_conv2d(MixedFeature.from_dense(torch.randn(1, 2, 4, 4), cells),
                 torch.randn(3, 2, 3, 3), dilation=2)
print(kernels.registered_backends()['cuda'].name, 'triton' in sys.modules)
'''


def test_ops_import_and_run_without_triton():
    """The import guard, on a (pretended) GPU machine: with triton absent
    the ops import and run and CUDA keeps the reference; with triton
    installed CUDA gets the Triton backend, and triton is imported only by
    the first CUDA kernel call, not by importing the ops."""
    for block in ([], ['block']):
        out = subprocess.run([sys.executable, '-c', SCRIPT] + block,
                             cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        name = 'triton' if HAS_TRITON and not block else 'torch_ref'
        assert out.stdout.split() == [name, 'False']


# ------------------------------------------------------ benchmark smoke
@needs_triton
def test_benchmark_gpu_smoke(tmp_path):
    out = tmp_path / 'table.md'
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'analysis_tools',
                                  'benchmark_gpu.py'), '--smoke',
         '--out', str(out)], cwd=str(tmp_path), capture_output=True,
        text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    text = out.read_text()
    for part in ('## correctness', '## op:', '## stages 3-4: dense OS8 and '
                 'OS16', '## targets', '## ASPP head: dense OS8 and OS16',
                 '## train step', '## tune'):
        assert text.count(part) == 1, part
    assert 'FAIL' not in text and 'WRONG' not in text
    # 3 checks per op shape, the stages and the head at s = 0, 0.5, 1 (vs
    # dense OS8, emulation, OS16) and s = 0.5 under autocast, stages + head
    # at s = 0.5, AMP gradients of the dense and selective stages
    checks = text[text.index('## correctness'):text.index('## op:')]
    assert checks.count('| ok |') == 2 * 3 + 4 + 5 + 2
    assert 'stages 3-4 s=1.0: sparse vs dense OS16' in text
    assert 'ASPP head s=1.0: sparse vs dense OS16' in text
    assert 'stages 3-4 + ASPP head s=0.5: sparse vs dense emulation' in text
    for what in ('R101 stages 3-4', 'ASPP head', 'stages 3-4 + ASPP head'):
        rows = [r for r in text.splitlines() if r.startswith(f'| {what} |')]
        assert [r.split(' | ')[3] for r in rows] == \
            ['0.0', '0.5', '0.8', '1.0'], what
    # the targets from this run's timings (batch 1, fp32 in smoke)
    targets = text[text.index('## targets'):text.index('## ASPP head')]
    assert 'stages 3-4, batch 1, fp32, s = 0.5: OS8 / selective' in targets
    assert 'not measured' not in targets
    assert text.count('(default)') == 2  # one tuned kernel per shape
    # the tune table's resources of a compiled kernel (none here)
    assert '| / best | regs | spill B | smem KiB |' in text


def load_benchmark_gpu():
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))
    try:
        import benchmark_gpu
    finally:
        sys.path.pop(0)
    return benchmark_gpu


def test_benchmark_gpu_targets():
    """The targets table: each bound on its side, 'not measured' without
    the timing (no GPU needed: the timings are given)."""
    target_rows = load_benchmark_gpu().target_rows
    # stages (OS8, OS16, selective ms): 1.5x faster at s = 0.5, 1.04x OS8
    # at s = 0, 1.25x OS16 at s = 1 (missed)
    results = {('stages', 8, 'fp16', 0.5): (150., 40., 100.),
               ('stages', 8, 'fp16', 0.0): (100., 40., 104.),
               ('stages', 8, 'fp16', 1.0): (100., 40., 50.),
               # op (dense, op ms): density 0.5 costs 0.625 of the
               # FLOPs: 0.70 met, 0.75 missed; density 0.25 (0.4375) met;
               # other shapes, dtypes and densities are not targets
               ('op', 'stage 3', 1, 'fp16', 0.5): (10., 7.),
               ('op', 'stage 3', 8, 'fp16', 0.5): (10., 7.5),
               ('op', 'stage 3', 8, 'fp16', 0.25): (10., 5.),
               ('op', 'stage 3', 8, 'fp16', 0.0): (10., 9.),
               ('op', 'stage 4', 8, 'fp16', 0.5): (10., 9.),
               ('op', 'stage 3', 8, 'fp32', 0.5): (10., 9.)}
    rows = target_rows(results)
    assert [(r[1], r[3]) for r in rows] == [
        ('1.500', 'met'), ('1.040', 'met'), ('1.250', 'MISSED'),
        ('0.075', 'met'), ('0.062', 'met'), ('0.125', 'MISSED')]
    assert 'batch 1, fp16, density 0.5' in rows[3][0]
    assert 'batch 8, fp16, density 0.25' in rows[4][0]
    empty = target_rows({})
    assert [r[3] for r in empty] == ['not measured'] * 4
    assert target_rows(results, batch=1)[0][3] == 'not measured'


@needs_triton
def test_benchmark_gpu_writes_the_parts_it_ran(tmp_path):
    out = tmp_path / 'table.md'
    benchmark_gpu = load_benchmark_gpu()
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.allow_tf32)
    benchmark_gpu.main(['--smoke', '--parts', 'op', '--out', str(out)])
    text = out.read_text()
    assert '## correctness' in text and '## op:' in text
    assert '## stages' not in text and '## train' not in text
    assert '## ASPP head' not in text
    assert 'train step' not in text  # its checks run with the part only
    # the dense baseline autotunes cuDNN as mmseg's configs do; torch's
    # settings are put back after the run
    assert 'cudnn.benchmark, as mmseg configs set it): True' in text
    assert (cudnn.benchmark, cudnn.allow_tf32) == before
    benchmark_gpu.main(['--smoke', '--parts', 'op', '--no-tf32',
                        '--no-cudnn-benchmark', '--out', str(out)])
    text = out.read_text()
    assert 'cudnn.benchmark, as mmseg configs set it): False' in text
    assert 'TF32: cuDNN convs and Triton kernels False' in text
    assert (cudnn.benchmark, cudnn.allow_tf32) == before


@needs_triton
def test_gpu_check_script(tmp_path):
    """tools/analysis_tools/gpu_check.sh, the one command of a lent GPU:
    environment, the CUDA tests (skipped here), then the benchmark (here
    --smoke), each into OUT; the benchmark's exit status is the script's."""
    out = tmp_path / 'out'
    res = subprocess.run(
        ['bash', osp.join(ROOT, 'tools', 'analysis_tools', 'gpu_check.sh'),
         str(out), '200', '--smoke', '--parts', 'op'],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHON=sys.executable))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f'torch {torch.__version__}' in (out / 'env.txt').read_text()
    pytest_log = (out / 'pytest_cuda.txt').read_text()
    assert 'pytest exit status: 0' in pytest_log
    assert 'skipped' in pytest_log and 'failed' not in pytest_log
    table = (out / 'benchmark_gpu.md').read_text()
    assert '## correctness' in table and '## op:' in table
    assert 'exit status: 0' in (out / 'benchmark_gpu.log').read_text()
    res = subprocess.run(
        ['bash', osp.join(ROOT, 'tools', 'analysis_tools', 'gpu_check.sh'),
         str(out), '200', '--smoke', '--parts', 'nothing'],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHON=sys.executable))
    assert res.returncode == 2  # argparse's, passed on


# ------------------------------------------------------- CUDA (compiled)
@pytest.fixture
def no_tf32():
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@needs_cuda
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('dilation', [1, 2, 4, 12, 36])
@pytest.mark.parametrize('mask_kind', ['half', 'one_high', 'all_high'])
def test_cuda_matches_reference(mask_kind, dilation, dtype, no_tf32):
    torch.manual_seed(dilation)
    src, weight, bias, index = conv_case(2, 256, 192, dilation, mask_kind,
                                         dtype, seed=dilation, h=32, w=48)
    src, weight, bias, index = (
        t.cuda() for t in (src, weight, bias, index))
    out = torch.full((index.numel() // 9, 192), float('nan'), dtype=dtype,
                     device='cuda')
    got = tk().gather_linear(src, index, weight, bias, out=out)
    check(got.cpu(), ref_gather(src, index, weight, bias).cpu(), dtype)
    res = torch.randn_like(got)
    got = tk().gather_linear(src, index, weight, bias, residual=res,
                             relu=True)
    check(got.cpu(), ref_gather(src, index, weight, bias, res, True).cpu(),
          dtype)
    w1 = weight[:, :, 1, 1]
    got = tk().rows_linear(src, w1, bias)
    expect = torch_ref.rows_linear(src.double(), w1.double(), bias.double())
    check(got.cpu(), expect.cpu(), dtype)


@needs_cuda
def test_cuda_kernel_info_reports_the_compiled_kernel():
    src, weight, bias, index = (t.cuda() for t in conv_case(
        1, 64, 64, 2, 'half', torch.float16, seed=0, h=16, w=16))
    info = tk().kernel_info(src, index, weight, bias)
    assert info.registers and info.registers <= 255
    assert info.spills is not None and info.spills >= 0
    assert info.shared and info.shared > 0


@needs_cuda
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_cuda_entrance_and_ops_end_to_end(dtype, no_tf32):
    """The registered CUDA backend is Triton's; sparse == dense emulation
    at the R101 stage-3 width on a 64 x 96 map."""
    assert kernels.backend_for(torch.zeros(1, device='cuda')).name == \
        'triton'
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 64, 96, generator=g).to('cuda', dtype)
    w = (torch.randn(256, 256, 3, 3, generator=g) / 48).to('cuda', dtype)
    b = torch.randn(256, generator=g).to('cuda', dtype)
    mask = random_cell_mask(2, 32, 48, 0.5, g).cuda()
    outs = []
    for execution in ('dense', 'sparse'):
        cells = CellMask(mask, execution)
        feat = MixedFeature.from_dense(x, cells)
        outs.append([selective_conv2d(feat, w, b, 4).densify(),
                     selective_entrance_conv2d(x, cells, w, b, 2)
                     .densify()])
    for s, d in zip(*outs):
        tol = 4 * TOL[dtype]  # both sides round (dense: cuDNN)
        torch.testing.assert_close(s.float(), d.float(), atol=tol, rtol=tol)
