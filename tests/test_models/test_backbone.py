"""SelDSResNetV1c against mmseg's own ResNetV1c (invariants I1-I3, I5)."""
import pytest
import torch
from mmseg.registry import MODELS

from tests import reference as ref
from tests.test_models.utils import (NARROW, OS8, OS16, mmseg_resnet,
                                     selds_backbone)


def close(outs, expected, rtol=1e-4):
    assert len(outs) == len(expected)
    for a, e in zip(outs, expected):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=rtol,
                                   atol=rtol * e.abs().max().item())


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('batch', [1, 2])
def test_i1_all_high_equals_mmseg_os8(depth, execution, batch):
    model = selds_backbone(depth, execution=execution).eval()
    x = torch.randn(batch, 3, 64, 96)
    with torch.no_grad():
        outs = model(x, ds_mask=torch.zeros(batch, 1, 4, 6))
        expected = mmseg_resnet(model)(x)
    close(outs, expected)


@pytest.mark.parametrize('depth', [18, 50])
def test_i1_in_training_mode(depth):
    """Dense training with BN batch statistics is mmseg's OS8 network."""
    model = selds_backbone(depth).train()
    reference = mmseg_resnet(model, training=True)
    x = torch.randn(2, 3, 64, 64)
    close(model(x, ds_mask=torch.zeros(2, 1, 4, 4)), reference(x))
    for a, b in zip(model.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('batch', [1, 2])
def test_i2_all_low_equals_mmseg_os16(depth, execution, batch):
    model = selds_backbone(depth, pool='stride', execution=execution).eval()
    x = torch.randn(batch, 3, 64, 96)
    with torch.no_grad():
        outs = model(x, ds_mask=torch.ones(batch, 1, 4, 6))
        os16 = mmseg_resnet(model, OS16)(x)
    close(outs[:2], os16[:2])
    close(outs[2:], [ref.up(o) for o in os16[2:]])


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('pool', ['stride', 'avg', 'max', 'adaptive'])
@pytest.mark.parametrize('batch,density', [(1, 0.3), (2, 0.7)])
def test_i3_dense_equals_sparse(depth, pool, batch, density):
    model = selds_backbone(depth, pool=pool).eval()
    x = torch.randn(batch, 3, 64, 96)
    mask = ref.random_mask(batch, 4, 6, density,
                           torch.Generator().manual_seed(depth))
    outs = []
    with torch.no_grad():
        for execution in ('dense', 'sparse'):
            model.execution = execution
            outs.append(model(x, ds_mask=mask))
    close(outs[0], outs[1])
    # the mask matters: the selective output is neither OS8 nor OS16
    with torch.no_grad():
        os8 = model(x, ds_mask=torch.zeros_like(mask))
    assert (outs[1][3] - os8[3]).abs().max() > 1e-3


def test_i3_gradients():
    """Input and weight gradients of dense and sparse execution agree (norm
    layers in eval; sparse execution carries no gradient to the mask)."""
    model = selds_backbone(18, pool='avg', norm_eval=True).train()
    x = torch.randn(2, 3, 64, 64)
    mask = ref.random_mask(2, 4, 4, 0.5, torch.Generator().manual_seed(0))
    grads = []
    for execution in ('dense', 'sparse'):
        model.execution = execution
        model.zero_grad()
        xs = x.clone().requires_grad_()
        outs = model(xs, ds_mask=mask)
        sum(o.square().mean() for o in outs).backward()
        grads.append((xs.grad, model.layer3[0].conv1.weight.grad,
                      model.layer4[1].conv2.weight.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3,
                                   atol=1e-4 * b.abs().max().item())


def test_i5_same_seed_same_mask_and_output():
    model = selds_backbone(18).train()
    x = torch.randn(2, 3, 64, 64)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs = model(x)
        runs.append((model.last_mask.detach(), outs[3].detach()))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)
    torch.manual_seed(4)
    model(x)
    assert not torch.equal(model.last_mask, runs[0][0])


def test_parameter_names_and_mmseg_state_dict():
    model = selds_backbone(50, pool='adaptive')
    reference = mmseg_resnet(model)
    fresh = selds_backbone(50, pool='adaptive')
    missing, unexpected = fresh.load_state_dict(reference.state_dict(),
                                                strict=False)
    assert not unexpected
    assert missing and all(
        k.startswith(('mask_head.', 'pooling.')) for k in missing)
    assert any(k.startswith('pooling.') for k in missing)


@pytest.mark.parametrize('depth,width', [(18, 32), (50, 128)])
def test_mask_head_channels_from_stage2(depth, width):
    model = selds_backbone(depth)
    assert model.mask_head.in_channels == width
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert model.last_mask.shape == (1, 1, 4, 4)
    assert model.last_logits.shape == (1, 2, 4, 4)
    assert 0.0 <= model.last_ratio <= 1.0


def test_execution_auto_and_attribute():
    model = selds_backbone(18)
    assert model.train().effective_execution() == 'dense'
    assert model.eval().effective_execution() == 'sparse'
    model.execution = 'dense'
    assert model.effective_execution() == 'dense'
    with pytest.raises(ValueError, match='unknown execution mode'):
        model.execution = 'fast'


def test_sparse_training_needs_eval_norms():
    """Sparse execution folds BatchNorm into its running statistics:
    train() with norm layers of stages 3-4 that would train is an error
    naming the first one and the ways out; frozen norms (norm_eval) train
    sparse; a norm layer switched to training behind the model's back
    fails at the forward with the same explanation."""
    from mmselds.ops import SparseTrainingError
    model = selds_backbone(18, execution='sparse')
    with pytest.raises(SparseTrainingError, match=r"^execution='sparse' in "
                       r'training mode, with \d+ norm layers of stages 3-4 '
                       r'training \(layer3\.0\.bn1, \.\.\.\): .*'
                       r"execution='auto'.*norm_eval=True"):
        model.train()
    model.eval()  # evaluation is what sparse execution is for
    frozen = selds_backbone(18, execution='sparse', norm_eval=True).train()
    out = frozen(torch.randn(1, 3, 64, 64))
    out[-1].sum().backward()
    assert frozen.layer4[0].conv2.weight.grad is not None
    model.layer3[0].bn1.train()
    with pytest.raises(SparseTrainingError, match='running statistics'):
        model(torch.randn(1, 3, 64, 64))


def test_with_cp_gives_the_same_gradients():
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for with_cp in (False, True):
        model = selds_backbone(18, with_cp=with_cp).train()
        xs = x.clone().requires_grad_()
        torch.manual_seed(0)
        sum(o.mean() for o in model(xs)).backward()
        grads.append((xs.grad, model.mask_head.convs[0][1].weight.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_gradient_reaches_mask_head():
    model = selds_backbone(18).train()
    model(torch.randn(2, 3, 64, 64))[3].square().mean().backward()
    grads = [p.grad for p in model.mask_head.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


class TestBadConfig:

    def build(self, **kwargs):
        cfg = dict(type='SelDSResNetV1c', depth=18, **NARROW)
        cfg.update(OS8)
        cfg.update(kwargs)
        return MODELS.build(cfg)

    @pytest.mark.parametrize('arg', ['mask_head', 'pooling'])
    @pytest.mark.parametrize('value', ['avg', None])
    def test_sub_configs_must_be_dicts(self, arg, value):
        with pytest.raises(TypeError, match=f'{arg} must be a config dict'):
            self.build(**{arg: value})

    def test_unknown_mask_head(self):
        with pytest.raises(KeyError, match='NoSuchHead'):
            self.build(mask_head=dict(type='NoSuchHead'))

    def test_unknown_pooling_mode(self):
        with pytest.raises(ValueError, match='unknown pooling mode'):
            self.build(pooling=dict(type='SelectivePooling', mode='median'))

    def test_mask_head_channels(self):
        with pytest.raises(ValueError, match='does not match the stage-2'):
            self.build(mask_head=dict(type='CADMaskHead', in_channels=512))

    @pytest.mark.parametrize('layout', [
        OS16, dict(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))])
    def test_not_os8(self, layout):
        with pytest.raises(ValueError, match='needs an OS8 layout'):
            self.build(**layout)

    def test_odd_dilation(self):
        with pytest.raises(ValueError, match=r'layer3_1.conv1 has dilation 3'):
            self.build(dilations=(1, 1, 3, 6))

    def test_caffe_style(self):
        with pytest.raises(ValueError, match='style="pytorch"'):
            self.build(style='caffe')

    def test_odd_os8_map(self):
        model = self.build().eval()
        with pytest.raises(ValueError, match='multiple of 16'):
            model(torch.randn(1, 3, 72, 64))

    def test_ds_mask_shape(self):
        model = self.build().eval()
        with pytest.raises(ValueError, match=r'\(N, 1, H/16, W/16\)'):
            model(torch.randn(1, 3, 64, 64), ds_mask=torch.zeros(1, 1, 8, 8))
