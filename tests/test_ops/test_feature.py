"""MixedFeature: construction, hi/lo, point-wise modules, bad input."""
import pytest
import torch
from torch import nn

from mmselds.ops import (CellMask, MixedFeature, SparseTrainingError,
                         selective_apply, selective_conv2d,
                         selective_entrance_conv2d)
from tests import reference as ref


def make(execution, density=0.5, seed=0, n=2, c=3, h=6, w=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    mask = ref.random_mask(n, h // 2, w // 2, density, g)
    return x, mask, CellMask(mask, execution)


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('mode', ['stride', 'avg', 'max'])
def test_from_dense_hi_lo(execution, mode):
    x, mask, cells = make(execution)
    feat = MixedFeature.from_dense(x, cells, mode)
    lo = ref.pool(x, mode)
    torch.testing.assert_close(feat.densify(), ref.densify(x, lo, mask))
    # lo: own value at low cells, pool(hi) at high cells (= pool(x) here)
    torch.testing.assert_close(feat.lo, lo)
    keep = ref.up(1 - mask).bool().expand_as(x)
    torch.testing.assert_close(feat.hi[keep], x[keep])


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
def test_from_hi_lo(execution):
    x, mask, cells = make(execution, seed=1)
    lo = torch.randn(2, 3, 3, 4)
    feat = MixedFeature.from_hi_lo(x, lo, cells, 'avg')
    torch.testing.assert_close(feat.densify(), ref.densify(x, lo, mask))
    expected_lo = lo * mask + ref.pool(x, 'avg') * (1 - mask)
    torch.testing.assert_close(feat.lo, expected_lo)


def test_sparse_rows_count_active_positions():
    x, mask, cells = make('sparse', density=0.25)
    feat = MixedFeature.from_dense(x, cells)
    low = int(mask.sum())
    assert feat.data.shape == (low + 4 * (mask.numel() - low), 3)
    assert cells.ratio() == mask.mean()


def pointwise_block(c):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(c, 5, 1, bias=False), nn.BatchNorm2d(5),
                          nn.ReLU(inplace=True), nn.Conv2d(5, 4, 1),
                          nn.Identity())
    with torch.no_grad():
        block[1].running_mean.normal_()
        block[1].running_var.uniform_(0.5, 2)
        block[1].weight.normal_()
        block[1].bias.normal_()
    return block.eval()


def test_pointwise_modules_dense_equals_sparse():
    block = pointwise_block(3)
    outs = []
    for execution in ('dense', 'sparse'):
        x, mask, cells = make(execution, seed=2)
        feat = MixedFeature.from_dense(x, cells)
        outs.append(selective_apply(feat, block).densify())
    expected = block(ref.densify(x, ref.pool(x, 'stride'), mask))
    for out in outs:
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_residual_add_and_relu():
    x, mask, cells = make('sparse', seed=3)
    a = MixedFeature.from_dense(x, cells)
    b = MixedFeature.from_dense(-2 * x, cells)
    torch.testing.assert_close((a + b).relu().densify(),
                               (-a.densify()).relu())
    other = MixedFeature.from_dense(x, CellMask(mask, 'sparse'))
    with pytest.raises(ValueError, match='same CellMask'):
        a + other


def test_batchnorm_training_statistics_of_densified_map():
    """Dense training normalises with the statistics of V, where a
    down-sampled cell counts as its 4 pixels."""
    x, mask, cells = make('dense', seed=4)
    bn = nn.BatchNorm2d(3)
    out = selective_apply(MixedFeature.from_dense(x, cells), bn).densify()
    v = ref.densify(x, ref.pool(x, 'stride'), mask)
    torch.testing.assert_close(bn.running_mean, 0.1 * v.mean((0, 2, 3)))
    mean = v.mean((0, 2, 3), keepdim=True)
    var = v.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(out, (v - mean) / (var + bn.eps).sqrt(),
                               atol=1e-5, rtol=1e-5)


def test_sparse_refuses_training_batchnorm():
    x, _, cells = make('sparse')
    with pytest.raises(SparseTrainingError, match='running statistics'):
        selective_apply(MixedFeature.from_dense(x, cells), nn.BatchNorm2d(3))


@pytest.mark.parametrize('module,error', [
    (nn.Conv2d(3, 3, 3), ValueError),
    (nn.Conv2d(3, 3, 1, stride=2), ValueError),
    (nn.MaxPool2d(2), NotImplementedError),
])
def test_non_pointwise_modules_are_refused(module, error):
    x, _, cells = make('dense')
    with pytest.raises(error, match='point-wise'):
        selective_apply(MixedFeature.from_dense(x, cells), module)


class TestBadInput:

    def test_odd_size(self):
        with pytest.raises(ValueError, match='must be even'):
            CellMask(torch.zeros(1, 1, 2, 2)).check_feature(
                torch.randn(1, 3, 5, 4))

    @pytest.mark.parametrize('shape', [(1, 2, 3, 4), (3, 4), (1, 1, 3, 3)])
    def test_mask_shape(self, shape):
        x = torch.randn(1, 3, 6, 8)
        with pytest.raises(ValueError, match=r'mask (must have|shape)'):
            MixedFeature.from_dense(x, CellMask(torch.zeros(shape)))

    def test_batch_mismatch(self):
        with pytest.raises(ValueError, match='does not fit'):
            MixedFeature.from_dense(torch.randn(2, 3, 6, 8),
                                    CellMask(torch.zeros(1, 1, 3, 4)))

    def test_non_binary_sparse_mask(self):
        with pytest.raises(ValueError, match='binary mask'):
            CellMask(torch.full((1, 1, 2, 2), 0.5), 'sparse')

    def test_nan_mask(self):
        with pytest.raises(ValueError, match='NaN'):
            CellMask(torch.full((1, 1, 2, 2), float('nan')), 'dense')

    def test_unknown_execution(self):
        with pytest.raises(ValueError, match='unknown execution mode'):
            CellMask(torch.zeros(1, 1, 2, 2), 'triton')

    def test_unknown_pooling(self):
        x, _, cells = make('dense')
        with pytest.raises(ValueError, match='unknown pooling mode'):
            MixedFeature.from_dense(x, cells, 'median')

    @pytest.mark.parametrize('k,dilation,match', [
        (5, 1, 'kernel size 5x5'), (3, 3, 'dilation 3'),
        (3, 0, 'positive int'), (3, 1.5, 'positive int')])
    def test_kernel_and_dilation(self, k, dilation, match):
        x, _, cells = make('dense')
        feat = MixedFeature.from_dense(x, cells)
        with pytest.raises(ValueError, match=match):
            selective_conv2d(feat, torch.randn(4, 3, k, k), None, dilation)

    def test_channels_and_groups(self):
        x, _, cells = make('sparse')
        feat = MixedFeature.from_dense(x, cells)
        with pytest.raises(ValueError, match='groups must be 1'):
            selective_conv2d(feat, torch.randn(4, 1, 3, 3))

    @pytest.mark.parametrize('execution', ['dense', 'sparse'])
    def test_dtype_mismatch(self, execution):
        x, _, cells = make(execution)
        feat = MixedFeature.from_dense(x, cells)
        with pytest.raises(ValueError, match='weight is torch.float64'):
            selective_conv2d(feat, torch.randn(4, 3, 3, 3).double())
        with pytest.raises(ValueError, match='bias is torch.float64'):
            selective_conv2d(feat, torch.randn(4, 3, 1, 1),
                             torch.zeros(4).double())

    @pytest.mark.parametrize('execution', ['dense', 'sparse'])
    def test_device_mismatch(self, execution):
        x, _, cells = make(execution)
        weight = torch.randn(4, 3, 3, 3, device='meta')
        with pytest.raises(ValueError, match='on meta but the feature is'):
            selective_conv2d(MixedFeature.from_dense(x, cells), weight)
        with pytest.raises(ValueError, match='on meta but the feature is'):
            selective_entrance_conv2d(x, cells, weight)

    def test_entrance_needs_3x3(self):
        x, _, cells = make('dense')
        with pytest.raises(ValueError, match='3x3'):
            selective_entrance_conv2d(x, cells, torch.randn(4, 3, 1, 1))

    def test_not_a_feature(self):
        with pytest.raises(ValueError, match='takes a MixedFeature'):
            selective_conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 3, 3))


def test_inplace_only_without_autograd():
    x, _, cells = make('sparse', seed=5)
    a = MixedFeature.from_dense(x, cells)
    b = MixedFeature.from_dense(-x, cells)
    with torch.no_grad():
        data = a.data
        out = a.add_relu_(b)
        assert out is a and out.data is data and (data == 0).all()
    leaf = MixedFeature.from_dense(x.clone().requires_grad_(), cells)
    summed = leaf.add_relu_(b)
    assert summed is not leaf and summed.data.requires_grad
    relu = nn.ReLU(inplace=True)
    assert selective_apply(leaf, relu) is not leaf
    with torch.no_grad():
        c = MixedFeature.from_dense(x, cells)
        assert selective_apply(c, relu) is c
        assert selective_apply(c, nn.ReLU()) is not c
