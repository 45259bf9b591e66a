"""The kernel dispatch: one backend per device type, dtypes declared per
backend, clear errors for combinations with no kernel, and the public ops
reaching their kernels only through it."""
import collections
import contextlib
import dataclasses

import pytest
import torch

from mmselds.ops import (CellMask, MixedFeature, kernels, release_workspace,
                         rows_linear, selective_conv2d,
                         selective_entrance_conv2d)
from mmselds.ops.kernels import torch_ref

MIXED = torch.tensor([[[[1., 0., 1.], [0., 0., 1.]]],
                      [[[0., 1., 1.], [1., 0., 0.]]]])


@contextlib.contextmanager
def registered(device_type, backend):
    """Register ``backend`` for ``device_type`` and restore the registry."""
    old = kernels.register_backend(device_type, backend, replace=True)
    try:
        yield backend
    finally:
        if old is None:
            kernels.unregister_backend(device_type)
        else:
            kernels.register_backend(device_type, old, replace=True)


def spy_backend(calls):
    """The reference kernels, counting each call in ``calls``."""
    def counted(name):
        fn = getattr(kernels.TORCH_REF, name)

        def run(*args):
            calls[name] += 1
            return fn(*args)
        return run
    return dataclasses.replace(
        kernels.TORCH_REF, name='spy',
        **{n: counted(n) for n in ('rows_linear', 'gather_linear',
                                   'conv2d_rows', 'release_workspace')})


def test_cpu_float32_runs_the_torch_reference():
    backend = kernels.backend_for(torch.zeros(2, 3))
    assert backend is kernels.TORCH_REF
    assert backend.name == 'torch_ref'
    assert backend.rows_linear is torch_ref.rows_linear
    assert backend.gather_linear is torch_ref.gather_linear
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        assert kernels.backend_for(torch.zeros(1, dtype=dtype)) is backend


def test_cuda_runs_triton_where_available_else_the_reference():
    from mmselds.ops.kernels import triton_backend
    cuda = kernels.registered_backends()['cuda']
    if triton_backend.available():
        assert cuda.name == 'triton'
    else:
        assert cuda is kernels.TORCH_REF


def test_device_without_backend_is_a_clear_error():
    assert 'meta' not in kernels.registered_backends()
    x = torch.empty(4, 3, device='meta')
    with pytest.raises(NotImplementedError,
                       match=r"torch\.float32 tensors on meta.*'meta'"):
        kernels.backend_for(x)
    with pytest.raises(NotImplementedError, match='meta'):
        rows_linear(x, torch.empty(2, 3, device='meta'))


@pytest.mark.parametrize('dtype', [torch.int32, torch.int64, torch.uint8])
def test_dtype_without_kernel_is_a_clear_error(dtype):
    with pytest.raises(NotImplementedError) as err:
        kernels.backend_for(torch.zeros(2, 3, dtype=dtype))
    msg = str(err.value)
    assert str(dtype) in msg and 'cpu' in msg and "'torch_ref'" in msg
    assert 'float32' in msg  # says what is supported


@pytest.mark.parametrize('fill', ['mixed', 0.0, 1.0])
def test_public_ops_refuse_unsupported_dtype(fill):
    """Sparse execution raises for an integer feature under every path
    (gather, uniform, 1x1); dense emulation is not dispatched."""
    mask = MIXED if fill == 'mixed' else torch.full_like(MIXED, fill)
    cells = CellMask(mask, 'sparse')
    x = torch.randint(-3, 3, (2, 4, 4, 6), dtype=torch.int32)
    w3 = torch.randint(-3, 3, (5, 4, 3, 3), dtype=torch.int32)
    feat = MixedFeature.from_dense(x, cells)
    for call in (lambda: selective_conv2d(feat, w3, dilation=2),
                 lambda: selective_conv2d(feat, w3[:, :, :1, :1]),
                 lambda: selective_entrance_conv2d(x, cells, w3)):
        with pytest.raises(NotImplementedError, match='torch.int32.*cpu'):
            call()


def test_registered_backend_is_picked_and_its_dtypes_enforced():
    only32 = dataclasses.replace(kernels.TORCH_REF, name='only32',
                                 dtypes=frozenset({torch.float32}))
    with registered('meta', only32):
        assert kernels.backend_for(torch.empty(1, device='meta')) is only32
        with pytest.raises(NotImplementedError,
                           match=r"torch\.float64.*'only32'.*float32"):
            kernels.backend_for(torch.empty(1, dtype=torch.float64,
                                            device='meta'))
    assert 'meta' not in kernels.registered_backends()


def test_registration_is_explicit():
    with pytest.raises(ValueError, match="'cpu' already has the "
                       "'torch_ref' backend"):
        kernels.register_backend('cpu', kernels.TORCH_REF)
    with pytest.raises(TypeError, match='Backend'):
        kernels.register_backend('meta', torch_ref)
    with pytest.raises(KeyError, match='meta'):
        kernels.unregister_backend('meta')
    assert kernels.registered_backends()['cpu'] is kernels.TORCH_REF


@pytest.mark.parametrize('fill', ['mixed', 0.0, 1.0])
def test_public_ops_reach_kernels_through_the_dispatch(fill):
    """Every sparse compute goes through the registered backend: uniform
    masks take the one dense conv (conv2d_rows) in both 3x3 ops, mixed masks
    the gather; results are those of the reference backend; dense
    emulation calls no kernel."""
    mask = MIXED if fill == 'mixed' else torch.full_like(MIXED, fill)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 6, generator=g)
    w3 = torch.randn(5, 4, 3, 3, generator=g)
    w1 = torch.randn(5, 4, 1, 1, generator=g)
    b = torch.randn(5, generator=g)

    def run(execution):
        cells = CellMask(mask, execution)
        feat = MixedFeature.from_dense(x, cells)
        return [selective_conv2d(feat, w3, b, 2).densify(),
                selective_conv2d(feat, w1, b).densify(),
                selective_entrance_conv2d(x, cells, w3, b, 2).densify()]

    want = run('sparse')
    calls = collections.Counter()
    with registered('cpu', spy_backend(calls)):
        got = run('sparse')
        sparse_calls = dict(calls)
        calls.clear()
        run('dense')
        assert not calls, f'dense execution called kernels: {dict(calls)}'
    path = 'gather_linear' if fill == 'mixed' else 'conv2d_rows'
    assert sparse_calls == {path: 2, 'rows_linear': 1}
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=0, rtol=0)


def test_release_workspace_reaches_every_backend():
    calls = collections.Counter()
    with registered('meta', spy_backend(calls)):
        release_workspace()
    assert calls == {'release_workspace': 1}
    with torch.no_grad():  # the reference's buffer is built, then freed
        feat = MixedFeature.from_dense(torch.randn(2, 4, 4, 6),
                                       CellMask(MIXED, 'sparse'))
        selective_conv2d(feat, torch.randn(5, 4, 3, 3))
    assert torch_ref._WORKSPACE
    release_workspace()
    assert not torch_ref._WORKSPACE


# ------------------------------------------------------------ the epilogue
@pytest.mark.parametrize('grad', [False, True])
@pytest.mark.parametrize('size', ['small', 'onednn'])
def test_epilogue_equals_separate_add_and_relu(grad, size):
    """relu(matmul + bias + residual), fused into oneDNN's conv for large
    float32 products without autograd, equals the separate ops."""
    g = torch.Generator().manual_seed(0)
    m, k, n = (40, 12, 8) if size == 'small' else (600, 700, 300)
    rows = torch.randn(m, k, generator=g).requires_grad_(grad)
    w = torch.randn(n, k, generator=g) / k**0.5
    b, res = torch.randn(n, generator=g), torch.randn(m, n, generator=g)
    with torch.set_grad_enabled(grad):
        plain = torch_ref.rows_linear(rows, w, b)
        for relu in (False, True):
            got = torch_ref.rows_linear(rows, w, b, residual=res, relu=relu)
            want = plain + res
            torch.testing.assert_close(got, want.relu() if relu else want,
                                       atol=1e-4, rtol=1e-4)
            got = torch_ref.rows_linear(rows, w, b, relu=relu)
            torch.testing.assert_close(got, plain.relu() if relu else plain,
                                       atol=1e-4, rtol=1e-4)
    if grad:
        got.sum().backward()
        assert rows.grad is not None


@pytest.mark.parametrize('fill', ['mixed', 0.0, 1.0])
@pytest.mark.parametrize('execution', ['dense', 'sparse'])
def test_selective_conv_epilogue(fill, execution):
    """The residual add and ReLU of selective_conv2d on every path (gather,
    uniform, 1x1) equal the conv followed by the separate ops."""
    g = torch.Generator().manual_seed(1)
    mask = MIXED if fill == 'mixed' else torch.full_like(MIXED, fill)
    cells = CellMask(mask, execution)
    feat = MixedFeature.from_dense(torch.randn(2, 5, 4, 6, generator=g),
                                   cells)
    res = MixedFeature.from_dense(torch.randn(2, 7, 4, 6, generator=g),
                                  cells)
    for k in (1, 3):
        w = torch.randn(7, 5, k, k, generator=g)
        b = torch.randn(7, generator=g)
        with torch.no_grad():
            plain = selective_conv2d(feat, w, b, 2 if k == 3 else 1)
            got = selective_conv2d(feat, w, b, 2 if k == 3 else 1,
                                   residual=res, relu=True)
        want = (plain.densify() + res.densify()).relu()
        torch.testing.assert_close(got.densify(), want, atol=1e-5,
                                   rtol=1e-5)
    other = MixedFeature.from_dense(res.densify(), CellMask(mask, execution))
    with pytest.raises(ValueError, match='same CellMask'):
        selective_conv2d(feat, w, b, 2, residual=other)


def test_fused_conv_is_counted_by_torch_flop_counter():
    """Under a dispatch mode (the FLOP counter) the epilogue runs as the
    standard ops, which the counter knows."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(1, 8, 6, 6)
    w, r = torch.randn(4, 8, 3, 3), torch.randn(1, 4, 6, 6)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        kernels.conv2d(x, w, None, 1, 1, 1, residual=r, relu=True)
    assert counter.get_total_flops() == 2 * 36 * 9 * 8 * 4


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                    reason='no oneDNN in this torch build')
def test_onednn_fused_conv_is_found():
    """The probe finds oneDNN's fused conv where oneDNN exists (else sparse
    inference silently loses the fusion)."""
    assert torch_ref._fused_conv() is not None


# ------------------------------------------- the two ways of gather_linear
def naive_gather(blocks, index, weight, bias):
    """sum_t src[index[r, t]] @ W_t + bias in float64, the concatenated
    source given a zero row at M."""
    src = torch.cat([b.double() for b in blocks], 1)
    src = torch.cat([src, src.new_zeros(1, src.shape[1])])
    taps = weight.shape[2] * weight.shape[3]
    cols = src[index].view(-1, taps * src.shape[1])
    w2d = weight.double().permute(0, 2, 3, 1).reshape(len(weight), -1)
    return cols @ w2d.t() + bias.double()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64,
                                   torch.bfloat16], ids=str)
@pytest.mark.parametrize('blocks', [1, 3])
@pytest.mark.parametrize('c_in,c_out', [(24, 5), (5, 24)])
def test_tap_first_and_im2col_equal_the_naive_sum(c_in, c_out, blocks,
                                                  dtype, monkeypatch):
    """Both ways of torch_ref.gather_linear (tap first: more input than
    output channels, no more source rows than outputs, no autograd, a large
    product (here: any); im2col otherwise) compute
    sum_t src[index[r, t]] @ W_t with index M reading zeros, from one
    source or from channel blocks, with the epilogue; the tap-first one
    also when its Y buffer holds fewer taps than the kernel (groups of
    taps)."""
    g = torch.Generator().manual_seed(c_in + blocks)
    M = R = 37
    src = torch.randn(M, c_in, generator=g).to(dtype)
    parts = tuple(src.tensor_split(blocks, dim=1)) if blocks > 1 else src
    index = torch.randint(0, M + 1, (R * 9, ), generator=g)
    index[:9] = M  # a row of padding only
    weight = (torch.randn(c_out, c_in, 3, 3, generator=g) / c_in).to(dtype)
    bias = torch.randn(c_out, generator=g).to(dtype)
    res = torch.randn(R, c_out, generator=g).to(dtype)
    want = naive_gather(src.tensor_split(blocks, dim=1), index, weight, bias)
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else \
        dict(atol=1e-5, rtol=1e-5)
    ways = collections.Counter()
    tap_first = torch_ref._tap_first
    monkeypatch.setattr(torch_ref, '_tap_first', lambda *a: ways.update(
        ['tap']) or tap_first(*a))
    with torch.no_grad():  # a small product: im2col's fixed cost is lower
        torch_ref.gather_linear(parts, index, weight, bias)
    assert not ways
    monkeypatch.setattr(torch_ref, '_TAP_FIRST_MACS', 0)
    for grad in (False, True):
        w = weight.clone().requires_grad_(grad)
        got = torch_ref.gather_linear(parts, index, w, bias, residual=res,
                                      relu=True)
        torch.testing.assert_close(got.double(), (want + res.double()).relu(),
                                   **tol)
    assert ways['tap'] == (1 if c_in > c_out else 0)  # never under autograd
    monkeypatch.setattr(torch_ref, '_GATHER_BYTES', 2 * (M + 1) * c_out *
                        src.element_size())  # two taps a group
    with torch.no_grad():
        got = torch_ref.gather_linear(parts, index, weight, bias)
    torch.testing.assert_close(got.double(), want, **tol)


def test_im2col_gathers_padding_from_blocks_of_rows(monkeypatch):
    """im2col in blocks of rows (a small _GATHER_BYTES), the padding rows
    zeroed in every block, with and without autograd; gradients reach the
    source rows read, not the padding."""
    g = torch.Generator().manual_seed(3)
    src = torch.randn(20, 4, generator=g)
    index = torch.randint(0, 21, (30 * 9, ), generator=g)
    weight = torch.randn(6, 4, 3, 3, generator=g)
    want = naive_gather((src, ), index, weight, torch.zeros(6))
    monkeypatch.setattr(torch_ref, '_GATHER_BYTES', 9 * 4 * 4 * 7)
    with torch.no_grad():
        got = torch_ref.gather_linear(src, index, weight)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    leaf = src.clone().requires_grad_()
    torch_ref.gather_linear(leaf, index, weight).sum().backward()
    read = torch.zeros(21).index_add_(0, index, torch.ones(len(index)))[:20]
    assert bool((leaf.grad[read == 0] == 0).all())
    assert bool((leaf.grad[read > 0] != 0).any())


def test_gather_source_blocks_must_share_rows():
    with pytest.raises(ValueError, match='blocks of'):
        torch_ref.gather_linear((torch.zeros(4, 2), torch.zeros(5, 2)),
                                torch.zeros(9, dtype=torch.long),
                                torch.zeros(3, 4, 3, 3))


def test_zero_reads_are_found_once_per_table_and_follow_changes():
    """im2col finds where a table reads the zero row once per table (the
    tables serve every conv of a pass), and again after the table changes
    in place or for another source length."""
    g = torch.Generator().manual_seed(4)
    src = torch.randn(12, 3, generator=g)
    weight = torch.randn(2, 3, 3, 3, generator=g)
    index = torch.randint(0, 12, (5 * 9, ), generator=g)  # no padding
    with torch.no_grad():
        torch_ref.gather_linear(src, index, weight)
        kept = index.__dict__['_mmselds_zero_reads']
        torch_ref.gather_linear(src, index, weight)
        assert index.__dict__['_mmselds_zero_reads'] is kept  # no new scan
        key, pad = kept
        assert key == (12, index._version) and pad is None
        index[3] = 12  # now one tap reads the zero row
        got = torch_ref.gather_linear(src, index, weight)
        want = naive_gather((src, ), index, weight, torch.zeros(2))
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
        new_key, pad = index.__dict__['_mmselds_zero_reads']
        assert new_key != key and pad.tolist() == [3]
        shorter = src[:11]  # index 11 is padding now, 12 is out of range
        index[3] = 11
        got = torch_ref.gather_linear(shorter, index, weight)
        torch.testing.assert_close(
            got.double(), naive_gather((shorter, ), index, weight,
                                       torch.zeros(2)), atol=1e-5, rtol=1e-5)
