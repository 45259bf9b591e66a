"""Selective ops under ``torch.autocast`` (AMP training and inference).

Autocast casts the operands of ``F.conv2d`` (float32 activations and
weights) to float16 / bfloat16; the selective ops must do the same in both
executions, in the sparse kernels and in the fused epilogue, or an AMP
training step fails on the first selective conv (a float32 weight meeting
a float16 feature). The CPU autocast runs the same code paths as CUDA's
(float16 and bfloat16 both exist on the CPU)."""
import pytest
import torch
from torch import nn

from mmselds.ops import (CellMask, MixedFeature, dense_layers, mixed_cat,
                         mixed_global_avg_pool, random_cell_mask, run_layers,
                         selective_conv2d, selective_entrance_conv2d)
from mmselds.ops.amp import amp_dtype, autocast_dtype

AMP_DTYPES = (torch.bfloat16, torch.float16)
# the output's rounding in the low-precision dtype (8 and 11 bits), on
# outputs of unit scale, plus the operands' rounding carried through a sum
# of a few dozen products
TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


def autocast(dtype):
    return torch.autocast('cpu', dtype=dtype)


def case(seed=0, n=2, c=6, c_out=5, h=8, w=12, density=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    w3 = torch.randn(c_out, c, 3, 3, generator=g) / (3 * c**0.5)
    w1 = torch.randn(c_out, c, 1, 1, generator=g) / c**0.5
    b = torch.randn(c_out, generator=g)
    res = torch.randn(n, c_out, h, w, generator=g)
    mask = random_cell_mask(n, h // 2, w // 2, 1 - density, g)
    return x, w3, w1, b, res, mask


def convs(x, w3, w1, b, res, mask, execution):
    """Each selective conv kind on a float feature: 3x3 at two dilations,
    1x1, 3x3 with the residual + ReLU epilogue, the stage entrance."""
    cells = CellMask(mask, execution)
    feat = MixedFeature.from_dense(x, cells)
    residual = MixedFeature.from_dense(res, cells)
    return [selective_conv2d(feat, w3, b, 2),
            selective_conv2d(feat, w3, None, 12),
            selective_conv2d(feat, w1, b),
            selective_conv2d(feat, w3, b, 4, residual=residual, relu=True),
            selective_entrance_conv2d(x, cells, w3, b, 2, relu=True)]


def test_autocast_dtype_follows_the_context():
    x = torch.zeros(1)
    assert autocast_dtype(x.device) is None and amp_dtype(x) is None
    for dtype in AMP_DTYPES:
        with autocast(dtype):
            assert autocast_dtype(x.device) == dtype
            assert amp_dtype(x) == dtype
            assert amp_dtype(x.double()) is None  # autocast leaves float64
            assert amp_dtype(x.long()) is None
    assert amp_dtype(x) is None


@pytest.mark.parametrize('dtype', AMP_DTYPES, ids=str)
@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('density', [0.5, 0.0, 1.0])
def test_convs_compute_in_the_autocast_dtype(dtype, execution, density):
    """Float32 operands under autocast give what the op gives on operands
    cast to the autocast dtype beforehand (what autocast does to
    ``F.conv2d``), in the autocast dtype; the mixed (gather) path and both
    uniform paths (densities 0 and 1) alike."""
    x, w3, w1, b, res, mask = case(density=density)
    with autocast(dtype):
        got = convs(x, w3, w1, b, res, mask, execution)
    want = convs(*(t.to(dtype) for t in (x, w3, w1, b, res)), mask,
                 execution)
    for g, e in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.densify(), e.densify(), atol=0, rtol=0)


@pytest.mark.parametrize('dtype', AMP_DTYPES, ids=str)
def test_sparse_equals_dense_emulation_and_float32_under_autocast(dtype):
    """I3 holds under autocast (to the low-precision rounding), and both
    stay within that rounding of the float32 result."""
    x, w3, w1, b, res, mask = case(seed=1)
    exact = convs(x, w3, w1, b, res, mask, 'dense')
    with autocast(dtype):
        dense = convs(x, w3, w1, b, res, mask, 'dense')
        sparse = convs(x, w3, w1, b, res, mask, 'sparse')
    tol = TOL[dtype]
    for s, d, e in zip(sparse, dense, exact):
        s, d = s.densify().float(), d.densify().float()
        assert torch.isfinite(s).all()
        torch.testing.assert_close(s, d, atol=tol, rtol=tol)
        torch.testing.assert_close(s, e.densify(), atol=tol, rtol=tol)


@pytest.mark.parametrize('dtype', AMP_DTYPES, ids=str)
def test_training_gradients_reach_float32_weights(dtype):
    """AMP training (dense emulation, as the models train): the float32
    master weights and the input get float32 gradients close to the float32
    run's."""
    x, w3, w1, b, res, mask = case(seed=2)
    cells = CellMask(mask, 'dense')

    def grads(amp):
        xs, w, w_1, bias = (t.clone().requires_grad_()
                            for t in (x, w3, w1, b))
        with torch.autocast('cpu', dtype=dtype, enabled=amp):
            feat = selective_entrance_conv2d(xs, cells, w, bias, 2,
                                             relu=True)
            feat = selective_conv2d(feat, w_1[:, :5], None)
            loss = feat.densify().float().square().mean()
        loss.backward()
        return [xs.grad, w.grad, w_1.grad, bias.grad]

    want, got = grads(False), grads(True)
    for g, e in zip(got, want):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        cos = torch.nn.functional.cosine_similarity(g.flatten(), e.flatten(),
                                                    dim=0)
        assert cos > 0.999, cos


def test_float64_is_not_cast():
    x, w3, w1, b, res, mask = case(seed=3)
    args = [t.double() for t in (x, w3, w1, b, res)]
    want = convs(*args, mask, 'sparse')
    with autocast(torch.bfloat16):
        got = convs(*args, mask, 'sparse')
    for g, e in zip(got, want):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g.densify(), e.densify(), atol=0, rtol=0)


def test_mismatched_dtypes_without_autocast_still_refused():
    x, w3, w1, b, res, mask = case()
    feat = MixedFeature.from_dense(x, CellMask(mask, 'sparse'))
    with pytest.raises(ValueError, match='weight is torch.float16'):
        selective_conv2d(feat, w3.half(), b.half(), 2)


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
def test_mixed_cat_promotes_under_autocast_only(execution):
    """Branches of another dtype (a float32 branch beside float16 ones)
    are promoted as ``torch.cat`` promotes them under autocast, refused
    outside it; the sparse result stays in blocks and a conv reads them."""
    x, w3, w1, b, res, mask = case(seed=4)
    cells = CellMask(mask, execution)
    a = MixedFeature.from_dense(x.half(), cells)
    f = MixedFeature.from_dense(x, cells)
    with pytest.raises(ValueError, match='one dtype.*float16.*float32'):
        mixed_cat([a, f])
    with autocast(torch.float16):
        cat = mixed_cat([a, f])
        assert cat.dtype == torch.float32
        assert all(blk.dtype == torch.float32 for blk in cat.row_blocks())
        out = selective_conv2d(cat, torch.cat([w3, w3], 1), b, 2)
        assert out.dtype == torch.float16
    torch.testing.assert_close(
        cat.densify(), torch.cat([a.densify().float(), f.densify()], 1),
        atol=0, rtol=0)
    want = selective_conv2d(MixedFeature.from_dense(x, CellMask(
        mask, 'dense')), 2 * w3, b, 2).densify()
    torch.testing.assert_close(out.densify().float(), want,
                               atol=TOL[torch.float16],
                               rtol=TOL[torch.float16])


@pytest.mark.parametrize('dtype', AMP_DTYPES, ids=str)
def test_dense_and_sparse_inference_of_blocks_under_autocast(dtype):
    """Sparse inference of a network under autocast: the dense part
    (``dense_layers``, folded BatchNorm with the fused oneDNN epilogue for
    float32, the shortcut add and ReLU in it) and a block through
    ``run_layers`` compute in the autocast dtype, close to float32."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 8, 12, generator=g)
    mask = random_cell_mask(2, 4, 6, 0.5, g)
    block = nn.Sequential(
        nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False),
        nn.BatchNorm2d(8)).eval()  # + shortcut, ReLU: the conv's epilogue
    for m in block:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)

    def run():
        with torch.no_grad():
            dense = dense_layers(x, [block], shortcut=x)
            feat = MixedFeature.from_dense(x, CellMask(mask, 'sparse'))
            return dense, run_layers(feat, [block]).densify()

    want = run()
    with autocast(dtype):
        got = run()
    for g_, e in zip(got, want):
        assert g_.dtype == dtype and torch.isfinite(g_).all()
        torch.testing.assert_close(g_.float(), e, atol=TOL[dtype],
                                   rtol=TOL[dtype])


@pytest.mark.parametrize('dtype', AMP_DTYPES, ids=str)
@pytest.mark.parametrize('density', [0.5, 0.0, 1.0])
def test_global_avg_pool_of_16bit_rows_sums_in_float32(dtype, density):
    """The ASPP image-pool branch on float16 / bfloat16 sparse rows (AMP
    inference): per-image sums of 128 x 128 values in [2, 6] exceed
    float16's range (65504); the mean is still the float64 mean of the
    same values to the dtype's rounding."""
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(2, 5, 128, 128, generator=g) * 4 + 2).to(dtype)
    mask = random_cell_mask(2, 64, 64, 1 - density, g)
    feat = MixedFeature.from_dense(x, CellMask(mask, 'sparse'))
    got = mixed_global_avg_pool(feat)
    want = feat.densify().double().mean(dim=(2, 3), keepdim=True)
    assert got.dtype == dtype and got.shape == (2, 5, 1, 1)
    eps = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]  # 1 ulp
    torch.testing.assert_close(got.double(), want, atol=0, rtol=eps)
