"""Selective conv: dense emulation == sparse execution (I3), both against a
float64 reference of DESIGN §3, and the all-high / all-low limits."""
import pytest
import torch
import torch.nn.functional as F

from mmselds.ops import (CellMask, MixedFeature, SelectivePooling,
                         selective_conv2d, selective_entrance_conv2d)
from mmselds.ops.kernels import torch_ref
from tests import reference as ref

ATOL = 1e-4  # float32 round-off on outputs of unit scale


def make_case(n, c, h, w, density, seed, c_out=6, k=3, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(c_out, c, k, k, generator=g) / (k * c**0.5)
    b = torch.randn(c_out, generator=g) if bias else None
    mask = ref.random_mask(n, h // 2, w // 2, density, g)
    return x, weight, b, mask


def run(x, mask, weight, bias, dilation, execution, pool='stride'):
    feat = MixedFeature.from_dense(x, CellMask(mask, execution), pool)
    return selective_conv2d(feat, weight, bias, dilation).densify()


@pytest.mark.parametrize('k', [1, 3])
# 6: low cells read an odd dilation (3); 12, 24: a whole map or more away (the
# taps land in the index tables' frame)
@pytest.mark.parametrize('dilation', [1, 2, 4, 6, 12, 24])
@pytest.mark.parametrize('density', [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize('n,size', [(1, (8, 12)), (3, (10, 6))])
# 3 output channels from 5: the kernel's tap-first way (im2col for 6)
@pytest.mark.parametrize('c_out', [6, 3])
def test_dense_equals_sparse_and_reference(k, dilation, density, n, size,
                                           c_out, monkeypatch):
    monkeypatch.setattr(torch_ref, '_TAP_FIRST_MACS', 0)  # tiny convs too
    x, w, b, mask = make_case(n, 5, *size, density, seed=dilation, k=k,
                              c_out=c_out)
    dense = run(x, mask, w, b, dilation, 'dense')
    sparse = run(x, mask, w, b, dilation, 'sparse')
    hi, lo = ref.selective_conv(x.double(), ref.pool(x.double(), 'stride'),
                                mask.double(), w.double(), b.double(),
                                dilation, 'stride')
    expected = ref.densify(hi, lo, mask.double()).float()
    assert sparse.shape == (n, c_out) + size
    torch.testing.assert_close(dense, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(sparse, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize('mode', ['stride', 'avg', 'max', 'adaptive'])
@pytest.mark.parametrize('density', [0.25, 0.75])
def test_pooling_modes_in_conv(mode, density):
    """Low cells read pool(hi) of high neighbours: each mode changes it."""
    x, w, b, mask = make_case(2, 4, 8, 8, density, seed=3)
    pool = SelectivePooling(mode, channels=4)
    if mode == 'adaptive':
        with torch.no_grad():
            pool.logits.normal_(generator=torch.Generator().manual_seed(1))
    outs = [run(x, mask, w, b, 2, ex, pool) for ex in ('dense', 'sparse')]
    logits = pool.logits.detach().double() if mode == 'adaptive' else None
    xd = x.double()
    lo = ref.pool(xd, mode, logits)
    hi, lo_out = ref.selective_conv(xd, lo, mask.double(), w.double(),
                                    b.double(), 2, mode, logits)
    expected = ref.densify(hi, lo_out, mask.double()).float()
    for out in outs:
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('dilation', [1, 2, 4, 12])
def test_all_high_is_plain_conv(execution, dilation):
    x, w, b, _ = make_case(2, 5, 12, 10, 1.0, seed=0)
    mask = torch.zeros(2, 1, 6, 5)
    out = run(x, mask, w, b, dilation, execution)
    expected = F.conv2d(x, w, b, padding=dilation, dilation=dilation)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('dilation', [1, 2, 4, 12])
def test_all_low_stride_is_os16_conv(execution, dilation):
    x, w, b, _ = make_case(2, 5, 12, 10, 0.0, seed=1)
    mask = torch.ones(2, 1, 6, 5)
    out = run(x, mask, w, b, dilation, execution, 'stride')
    rl = max(dilation // 2, 1)
    os16 = F.conv2d(x[:, :, ::2, ::2], w, b, padding=rl, dilation=rl)
    torch.testing.assert_close(out, ref.up(os16), atol=ATOL, rtol=0)


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('dilation', [1, 2, 4, 6, 14])
@pytest.mark.parametrize('density', [0.0, 0.5, 1.0])
def test_entrance(execution, dilation, density):
    x, w, b, mask = make_case(2, 5, 10, 12, density, seed=4)
    cells = CellMask(mask, execution)
    out = selective_entrance_conv2d(x, cells, w, b, dilation).densify()
    hi, lo = ref.entrance_conv(x.double(), w.double(), b.double(), dilation)
    expected = ref.densify(hi, lo, mask.double()).float()
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    if density == 0.0:  # all low: exactly the OS16 stride-2 conv, x2
        rl = max(dilation // 2, 1)
        os16 = F.conv2d(x, w, b, stride=2, padding=rl, dilation=rl)
        torch.testing.assert_close(out, ref.up(os16), atol=ATOL, rtol=0)


@pytest.mark.parametrize('which', ['one_low', 'one_high'])
@pytest.mark.parametrize('execution', ['dense', 'sparse'])
def test_single_cell_masks(which, execution):
    x, w, b, _ = make_case(1, 3, 8, 8, 1.0, seed=5)
    mask = torch.zeros(1, 1, 4, 4) if which == 'one_low' else \
        torch.ones(1, 1, 4, 4)
    mask[0, 0, 1, 2] = 1 - mask[0, 0, 1, 2]
    out = run(x, mask, w, b, 2, execution)
    hi, lo = ref.selective_conv(x.double(), ref.pool(x.double(), 'stride'),
                                mask.double(), w.double(), b.double(), 2,
                                'stride')
    expected = ref.densify(hi, lo, mask.double()).float()
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize('mode', ['stride', 'avg', 'max', 'adaptive'])
@pytest.mark.parametrize('k', [1, 3])
def test_dense_gradients_match_float64_reference(mode, k):
    """Input, weight, bias and straight-through mask gradients of the dense
    emulation against autograd through the float64 reference."""
    x, w, b, mask = make_case(2, 4, 8, 6, 0.5, seed=6, k=k)
    g = torch.randn(2, 6, 8, 6, generator=torch.Generator().manual_seed(9))
    pool = SelectivePooling(mode, channels=4)
    if mode == 'adaptive':
        with torch.no_grad():
            pool.logits.normal_(generator=torch.Generator().manual_seed(2))

    def grads(x, w, b, mask, logits, dtype, fn):
        leaves = [t.detach().to(dtype).requires_grad_() for t in
                  (x, w, b, mask, logits)]
        out = fn(*leaves)
        (out * g.to(dtype)).sum().backward()
        return [t.grad for t in leaves]

    def ours(x, w, b, mask, logits):
        if mode == 'adaptive':  # a plain tensor, so the leaf gets the grad
            del pool.logits
            pool.logits = logits
        feat = MixedFeature.from_dense(x, CellMask(mask, 'dense'), pool)
        return selective_conv2d(feat, w, b, 2).densify()

    def reference(x, w, b, mask, logits):
        lg = logits if mode == 'adaptive' else None
        lo = ref.pool(x, mode, lg)
        if k == 1:  # point-wise: commutes with replication, no blend
            return F.conv2d(ref.densify(x, lo, mask), w, b)
        hi, lo = ref.selective_conv(x, lo, mask, w, b, 2, mode, lg)
        return ref.densify(hi, lo, mask)

    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    got = grads(x, w, b, mask, logits, torch.float32, ours)
    want = grads(x, w, b, mask, logits, torch.float64, reference)
    names = ['input', 'weight', 'bias', 'mask', 'pool logits']
    if mode == 'max':
        # A down-sampled cell of V is constant, so max pooling breaks a tie
        # when the conv reads it; the straight-through mask gradient then
        # follows the tie-break (documented), not the reference's argmax.
        assert torch.isfinite(got[3]).all()
        names[3] = got[3] = want[3] = None
    for name, a, e in zip(names, got, want):
        if name is None:
            continue
        if e is None:
            assert a is None or not a.abs().sum(), name
            continue
        assert a is not None, f'no gradient for the {name}'
        torch.testing.assert_close(a, e.float(), atol=2e-4, rtol=1e-4,
                                   msg=f'{name} gradient differs')
    assert got[3] is None or got[3].abs().sum() > 0, 'no mask gradient'


@pytest.mark.parametrize('mode', ['stride', 'avg'])
@pytest.mark.parametrize('density', [0.0, 0.5, 1.0])
def test_sparse_gradients_equal_dense(mode, density):
    """I3 for training: input and weight gradients agree."""
    x, w, b, mask = make_case(2, 4, 8, 10, density, seed=7)
    g = torch.randn(2, 6, 8, 10, generator=torch.Generator().manual_seed(3))
    results = []
    for execution in ('dense', 'sparse'):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        feat = MixedFeature.from_dense(xs, CellMask(mask, execution), mode)
        out = selective_conv2d(feat, ws, bs, 2).densify()
        (out * g).sum().backward()
        results.append((xs.grad, ws.grad, bs.grad))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, atol=2e-4, rtol=1e-4)


def test_sparse_entrance_gradients_equal_dense():
    x, w, b, mask = make_case(1, 4, 8, 8, 0.5, seed=8)
    results = []
    for execution in ('dense', 'sparse'):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = selective_entrance_conv2d(xs, CellMask(mask, execution), ws, b)
        out.densify().square().sum().backward()
        results.append((xs.grad, ws.grad))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize('fill', [0.0, 1.0])
def test_uniform_masks_run_one_dense_conv(fill):
    """All cells at one resolution: no gather, so neither an index table
    nor the im2col buffer is built (the machinery costs nothing)."""
    from mmselds.ops import release_workspace
    from mmselds.ops.kernels import torch_ref
    x, w, b, _ = make_case(2, 5, 12, 10, 1.0, seed=6)
    cells = CellMask(torch.full((2, 1, 6, 5), fill), 'sparse')
    release_workspace()
    with torch.no_grad():
        feat = MixedFeature.from_dense(x, cells)
        selective_conv2d(feat, w, b, 2)
        selective_entrance_conv2d(x, cells, w, b, 2)
    assert torch_ref._WORKSPACE == {}
    assert cells._cache == {}
    # control: a mixed mask gathers, so it builds both
    mixed = torch.full((2, 1, 6, 5), fill)
    mixed[0, 0, 0, 0] = 1 - fill
    cells = CellMask(mixed, 'sparse')
    with torch.no_grad():
        selective_conv2d(MixedFeature.from_dense(x, cells), w, b, 2)
    assert torch_ref._WORKSPACE != {} and cells._cache != {}
    release_workspace()
    assert torch_ref._WORKSPACE == {}


def test_batch_of_one_all_high_and_one_all_low_image():
    x, w, b, _ = make_case(2, 5, 12, 10, 1.0, seed=7)
    mask = torch.zeros(2, 1, 6, 5)
    mask[1] = 1
    for entrance in (False, True):
        outs = []
        for execution in ('dense', 'sparse'):
            cells = CellMask(mask, execution)
            out = selective_entrance_conv2d(x, cells, w, b, 4) if entrance \
                else selective_conv2d(MixedFeature.from_dense(x, cells), w,
                                      b, 4)
            outs.append(out.densify())
        torch.testing.assert_close(outs[1], outs[0], atol=ATOL, rtol=0)


def test_gather_source_is_built_once_per_feature_and_pooling(monkeypatch):
    """Parallel 3x3 convs on one feature (the ASPP branches) share the
    gather source in inference; a change of the data builds a new one."""
    x, w, b, mask = make_case(1, 5, 8, 12, 0.5, seed=0)
    feat = MixedFeature.from_dense(x, CellMask(mask, 'sparse'), 'avg')
    calls = []
    pooled_rows = MixedFeature.pooled_rows
    monkeypatch.setattr(MixedFeature, 'pooled_rows',
                        lambda self, pool=None: calls.append(1) or
                        pooled_rows(self, pool))
    with torch.no_grad():
        outs = [selective_conv2d(feat, w, b, d).densify() for d in (2, 4)]
        assert len(calls) == 1
        selective_conv2d(feat, w, b, 2, pool='max')  # another pooling
        assert len(calls) == 2
        feat.data.mul_(2)  # new data: a new source
        again = selective_conv2d(feat, w, b, 2, pool='max').densify()
        assert len(calls) == 3

    def fresh(v, d, pool):  # a new feature: nothing kept
        f = MixedFeature.from_dense(v, CellMask(mask, 'dense'), 'avg')
        return selective_conv2d(f, w, b, d, pool=pool).densify()

    torch.testing.assert_close(again, fresh(2 * x, 2, 'max'), atol=ATOL,
                               rtol=ATOL)
    torch.testing.assert_close(outs[1], fresh(x, 4, 'avg'), atol=ATOL,
                               rtol=ATOL)
