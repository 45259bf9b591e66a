"""Sparse inference gives the dense result however the weights changed,
under torch.inference_mode, and names what it cannot run: weights changed
without a new tensor version (fused optimisers, BatchNorm statistics of
training forwards), NaN weights (the fused conv+ReLU would map NaN to 0),
empty batches, forced masks outside [0, 1], inputs that are not images."""
import pytest
import torch
from torch import nn

from mmselds.ops import (CellMask, MixedFeature, clear_sparse_weights,
                         random_cell_mask, run_layers)
from tests.test_models.test_selds_head import close, force_mask, selds_model
from tests.test_models.utils import selds_backbone

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
MASK = random_cell_mask(2, 4, 4, 0.5,
                        generator=torch.Generator().manual_seed(1))


def outputs(model, execution, **kw):
    model.execution = execution
    with torch.no_grad():
        return [o.clone() for o in model(X, ds_mask=MASK, **kw)]


def check_sparse_is_dense(model):
    for s, d in zip(outputs(model, 'sparse'), outputs(model, 'dense')):
        close(s, d)
    model.execution = 'auto'


def step(model, fused):
    """One training step that changes every weight of stages 3-4 (and the
    BatchNorm statistics) without autograd's in-place version bumps."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, fused=fused)
    sum(o.square().mean() for o in model(X, ds_mask=MASK)).backward()
    opt.step()
    model.eval()


@pytest.mark.parametrize('fused', [True, False])
def test_sparse_sees_weights_trained_after_a_validation(fused):
    model = selds_backbone(18, norm_eval=False).eval()
    check_sparse_is_dense(model)  # fills the folded-weight cache
    step(model, fused)
    check_sparse_is_dense(model)


def test_sparse_sees_batchnorm_statistics_reestimated():
    model = selds_backbone(18).eval()
    check_sparse_is_dense(model)
    model.train()
    with torch.no_grad():  # BN re-estimation: statistics only
        for _ in range(3):
            model(X * 3 + 1, ds_mask=MASK)
    model.eval()
    check_sparse_is_dense(model)


def test_writes_through_data_need_clear_sparse_weights():
    """The documented limit: an edit through ``.data`` in eval mode keeps
    the version, so the kept copy is stale until cleared."""
    model = selds_backbone(18).eval()
    before = outputs(model, 'sparse')
    model.layer3[0].conv2.weight.data.mul_(0.5)
    clear_sparse_weights(model)
    after = outputs(model, 'sparse')
    assert not torch.allclose(before[2], after[2])
    check_sparse_is_dense(model)


def test_whole_model_head_refolds_after_training():
    model = selds_model().eval()
    force_mask(model, masks=MASK)
    inputs = torch.randn(2, 3, 64, 64)

    def logits(execution):
        model.backbone.execution = execution
        with torch.no_grad():
            return model(inputs, mode='tensor')

    close(logits('sparse'), logits('dense'))
    head = model.decode_head
    model.train()
    opt = torch.optim.SGD(head.parameters(), lr=0.5, fused=True)
    for p in head.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    model.eval()
    close(logits('sparse'), logits('dense'))


@pytest.mark.parametrize('pool', ['stride', 'avg', 'max', 'adaptive'])
def test_inference_mode(pool):
    model = selds_backbone(18, pool=pool).eval()
    with torch.no_grad():
        want = [o.clone() for o in model(X, ds_mask=MASK)]
    for _ in range(2):  # and again, with whatever was kept
        with torch.inference_mode():
            got = model(X, ds_mask=MASK)
            for g, w in zip(got, want):
                close(g, w)


def test_inference_mode_whole_model():
    model = selds_model(pool='adaptive').eval()
    inputs = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(inputs, mode='tensor')
    with torch.inference_mode():
        close(model(inputs, mode='tensor'), want)


@pytest.mark.parametrize('where', ['stem', 'layer3', 'bn'])
def test_nan_weights_are_named(where):
    model = selds_backbone(18).eval()
    with torch.no_grad():
        if where == 'stem':
            model.stem[0].weight[0, 0, 0, 0] = float('nan')
        elif where == 'layer3':
            model.layer3[0].conv2.weight[0, 0, 0, 0] = float('nan')
        else:
            model.layer1[0].bn1.running_var[0] = float('nan')
    with pytest.raises(FloatingPointError, match='NaN or Inf'):
        with torch.no_grad():
            model(X)


def test_empty_batch_and_bad_inputs_are_named():
    model = selds_backbone(18).eval()
    with pytest.raises(ValueError, match='empty batch'):
        model(torch.zeros(0, 3, 64, 64))
    model.train()
    ratio = model.mask_head.trained_ratio.clone()
    with pytest.raises(ValueError, match='empty batch'):
        model(torch.zeros(0, 3, 64, 64))
    torch.testing.assert_close(model.mask_head.trained_ratio, ratio,
                               equal_nan=True)
    for bad in (torch.zeros(3, 64, 64), X.numpy(), X.tolist()):
        with pytest.raises(ValueError, match=r'\(N, C, H, W\) image'):
            model(bad)


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('value', [2.0, -1.0, float('nan')])
def test_forced_mask_outside_0_1_is_named(execution, value):
    model = selds_backbone(18, execution=execution).eval()
    with pytest.raises(ValueError, match=r'values in \[0, 1\]'):
        model(X, ds_mask=torch.full((2, 1, 4, 4), value))
    model.execution = 'dense'  # a soft mask inside [0, 1] still blends
    with torch.no_grad():
        model(X, ds_mask=torch.full((2, 1, 4, 4), 0.25))


@pytest.mark.parametrize('layer', [nn.LayerNorm(8), nn.Linear(8, 8),
                                   nn.Softmax(dim=1)])
def test_run_layers_names_layers_that_are_not_element_wise(layer):
    feat = MixedFeature.from_dense(
        torch.randn(1, 8, 8, 8), CellMask(MASK[:1], 'sparse'))
    with pytest.raises(NotImplementedError, match=type(layer).__name__):
        run_layers(feat, [layer])


@pytest.mark.parametrize('act', [nn.ReLU6(), nn.GELU(), nn.SiLU(),
                                 nn.LeakyReLU(0.1), nn.Hardswish(),
                                 nn.Sigmoid()])
def test_run_layers_element_wise_activations_match_dense(act):
    x = torch.randn(1, 8, 8, 8)
    out = {}
    for execution in ('dense', 'sparse'):
        feat = MixedFeature.from_dense(x, CellMask(MASK[:1], execution))
        out[execution] = run_layers(feat, [act]).densify()
    close(out['sparse'], out['dense'])
