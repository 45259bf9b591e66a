"""SelectivePoolingNeck and SelDSASPPHead against mmseg's own modules with
the same weights (DESIGN §7): all high == OS8 DeepLabV3, all low (stride
pooling) == OS16 DeepLabV3 with halved ASPP rates, dense == sparse."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.models.decode_heads import ASPPHead
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmselds.models import SelDSASPPHead, SelectivePoolingNeck
from mmselds.ops import (CellMask, MixedFeature, SelectiveOutputs,
                         mixed_broadcast, mixed_cat, mixed_global_avg_pool,
                         random_cell_mask, upsample2)
from mmselds.ops.kernels import torch_ref
from tests.test_models.utils import (NARROW, OS8, OS16, randomize_,
                                     selds_backbone)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BN = dict(type='BN', requires_grad=True)
RATES = [(1, 12, 24, 36), (1, 4, 8, 12)]  # halved: no 1 but the 1x1


def head_cfg(dilations=(1, 12, 24, 36), type='SelDSASPPHead'):
    return dict(type=type, in_channels=128, in_index=3, channels=32,
                dilations=dilations, dropout_ratio=0.1, num_classes=5,
                norm_cfg=BN, align_corners=False)


def model_cfg(backbone, head, neck=True):
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='mmseg.SegDataPreProcessor',
                               mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=255),
        backbone=backbone, decode_head=head,
        auxiliary_head=dict(type='FCNHead', in_channels=64, in_index=2,
                            channels=16, num_convs=1, concat_input=False,
                            dropout_ratio=0.1, num_classes=5, norm_cfg=BN,
                            align_corners=False,
                            loss_decode=dict(type='CrossEntropyLoss',
                                             loss_weight=0.4)))
    if neck:
        cfg['neck'] = dict(type='SelectivePoolingNeck')
    return cfg


def selds_model(dilations=(1, 12, 24, 36), pool='stride'):
    bb = dict(type='SelDSResNetV1c', depth=18,
              pooling=dict(type='SelectivePooling', mode=pool), **OS8,
              **NARROW)
    model = MODELS.build(model_cfg(bb, head_cfg(dilations)))
    randomize_(model)
    # the backbone helper's small mask logits: mixed predicted masks
    model.backbone = selds_backbone(pool=pool).train(model.training)
    return model


def dense_model(selds, layout, dilations):
    bb = dict(type='ResNetV1c', depth=18, **layout, **NARROW)
    ref = MODELS.build(model_cfg(bb, head_cfg(dilations, 'ASPPHead'),
                                 neck=False))
    missing, unexpected = ref.load_state_dict(selds.state_dict(),
                                              strict=False)
    assert not missing
    assert unexpected and all(
        k.startswith(('backbone.mask_head.', 'backbone.pooling.'))
        for k in unexpected)
    return ref.eval()


def force_mask(model, value=None, masks=None):
    """Make the backbone use a fixed mask (all ``value``, or ``masks``)."""
    def sample(logits):
        if masks is not None:
            return masks.to(logits.dtype)
        n, _, h, w = logits.shape
        return logits.new_full((n, 1, h, w), float(value))
    model.backbone.mask_head.sample = sample


def data_samples(n, classes, g):
    samples = []
    for _ in range(n):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(
            data=torch.randint(0, classes, (1, 64, 128), generator=g))
        s.set_metainfo(dict(img_shape=(64, 128), pad_shape=(64, 128),
                            ori_shape=(64, 128)))
        samples.append(s)
    return samples


def close(a, b, rtol=1e-4):
    assert a.shape == b.shape
    scale = b.abs().max().clamp_min(1e-6)
    err = (a - b).abs().max() / scale
    assert err < rtol, float(err)


# ---------------------------------------------------------------- the ops
@pytest.mark.parametrize('ratio', [0.0, 0.5, 1.0])
def test_mixed_ops_match_dense(ratio):
    g = torch.Generator().manual_seed(0)
    mask = random_cell_mask(2, 4, 6, ratio, generator=g)
    x = torch.randn(2, 3, 8, 12, generator=g)
    dense = MixedFeature.from_dense(x, CellMask(mask, 'dense'))
    sparse = MixedFeature.from_dense(x, CellMask(mask, 'sparse'))
    v = dense.densify()
    close(mixed_global_avg_pool(sparse), v.mean((2, 3), keepdim=True), 1e-5)
    assert torch.equal(mixed_global_avg_pool(dense),
                       v.mean((2, 3), keepdim=True))
    y = torch.randn(2, 5, 8, 12, generator=g)
    for feat in (dense, sparse):
        other = MixedFeature.from_dense(y, feat.cells)
        cat = mixed_cat([feat, other])
        close(cat.densify(), torch.cat([v, other.densify()], 1), 1e-6)
        vec = torch.randn(2, 4, generator=g)
        b = mixed_broadcast(vec, feat.cells).densify()
        assert torch.equal(b, vec[:, :, None, None].expand(-1, -1, 8, 12))


@pytest.mark.parametrize('pool', ['stride', 'avg'])
def test_conv_of_a_sparse_cat_reads_its_blocks(pool, monkeypatch):
    """A selective 3x3 conv of a sparse mixed_cat equals the dense
    emulation's conv of the concatenated map; with ``stride`` pooling (the
    head's) it reads the features' rows as blocks and the concatenation is
    never formed; reading ``data`` forms it once, and later convs read it."""
    from mmselds.ops import selective_conv2d
    g = torch.Generator().manual_seed(1)
    mask = random_cell_mask(2, 4, 6, 0.5, generator=g)
    xs = [torch.randn(2, c, 8, 12, generator=g) for c in (6, 3, 5)]
    w = torch.randn(4, 14, 3, 3, generator=g) / 10
    b = torch.randn(4, generator=g)

    def conv(execution):
        cells = CellMask(mask, execution)
        cat = mixed_cat([MixedFeature.from_dense(x, cells, pool)
                         for x in xs])
        return cat, selective_conv2d(cat, w, b, 4)

    _, want = conv('dense')
    monkeypatch.setattr(torch_ref, '_TAP_FIRST_MACS', 0)  # (a tiny conv)
    formed = []
    real_cat = torch.cat
    with torch.no_grad():
        monkeypatch.setattr(torch, 'cat', lambda ts, *a, **k: formed.append(
            len(ts)) or real_cat(ts, *a, **k))
        cat, got = conv('sparse')
        assert (3 in formed) == (pool != 'stride')  # the 3 blocks
        monkeypatch.setattr(torch, 'cat', real_cat)
        close(got.densify(), want.densify(), 1e-5)
        if pool == 'stride':
            assert len(cat.row_blocks()) == 3 and cat.channels == 14
            assert cat.data.shape == (cat.cells.num_rows, 14)
            assert cat.row_blocks() == (cat.data, )
            cat.data.mul_(2)  # the formed data is what convs read now
            close(selective_conv2d(cat, w, None, 4).densify(),
                  2 * (want.densify() - b.view(1, -1, 1, 1)), 1e-5)


def test_mixed_ops_bad_input():
    cells = CellMask(torch.zeros(1, 1, 2, 2), 'sparse')
    other = CellMask(torch.zeros(1, 1, 2, 2), 'sparse')
    a = MixedFeature.from_dense(torch.randn(1, 2, 4, 4), cells)
    b = MixedFeature.from_dense(torch.randn(1, 2, 4, 4), other)
    with pytest.raises(ValueError, match='same CellMask'):
        mixed_cat([a, b])
    with pytest.raises(ValueError, match='MixedFeature'):
        mixed_cat([a, torch.randn(1, 2, 4, 4)])
    with pytest.raises(ValueError, match='shape'):
        mixed_broadcast(torch.randn(2, 3), cells)
    with pytest.raises(ValueError, match='MixedFeature'):
        mixed_global_avg_pool(torch.randn(1, 2, 4, 4))


# ----------------------------------------------------- outputs and the neck
def test_backbone_outputs_carry_the_selection():
    bb = selds_backbone().eval()
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        outs = bb(x)
    assert isinstance(outs, SelectiveOutputs) and len(outs) == 4
    assert isinstance(outs.mixed, MixedFeature)
    assert outs.cells is outs.mixed.cells
    assert torch.equal(outs.cells.mask, bb.last_mask)
    assert torch.equal(outs.mixed.densify(), outs[-1])
    assert type(outs[1:]) is tuple
    neck = SelectivePoolingNeck()
    assert neck(outs) is outs
    plain = neck([outs[0], outs[1]])
    assert type(plain) is tuple and len(plain) == 2
    with pytest.raises(ValueError, match='tuple of feature maps'):
        neck(outs[-1])
    # without stage 4 in the outputs there is no mixed feature to hand on,
    # but the selection still travels with the outputs
    bb3 = selds_backbone(out_indices=(0, 1, 2)).eval()
    with torch.no_grad():
        outs3 = bb3(x)
    assert len(outs3) == 3 and outs3.mixed is None
    assert torch.equal(outs3.cells.mask, bb3.last_mask)
    with pytest.raises(ValueError, match='other cells'):
        SelectiveOutputs(outs, outs.mixed, outs3.cells)


# ------------------------------------------------------------- invariants
@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('dilations', RATES)
def test_all_high_equals_mmseg_os8(execution, dilations):
    model = selds_model(dilations).eval()
    model.backbone.execution = execution
    force_mask(model, 0)
    ref = dense_model(model, OS8, dilations)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        out = model(x, mode='tensor')
        expected = ref(x, mode='tensor')
        # the head alone, on the same OS8 features
        feats = model.extract_feat(x)
        head = model.decode_head(feats)
        stock = ref.decode_head(tuple(feats))
    close(out, expected)
    close(head, stock)


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
@pytest.mark.parametrize('dilations', RATES)
def test_all_low_equals_mmseg_os16(execution, dilations):
    model = selds_model(dilations).eval()
    model.backbone.execution = execution
    force_mask(model, 1)
    halved = tuple(max(d // 2, 1) for d in dilations)
    ref = dense_model(model, OS16, halved)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        out = model(x, mode='tensor')
        expected = upsample2(ref(x, mode='tensor'))
    close(out, expected)


@pytest.mark.parametrize('pool', ['stride', 'adaptive'])
@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('ratio', [0.3, 0.7])
# the kernel's two ways: im2col, tap first (which full-size heads take)
@pytest.mark.parametrize('tap_first', [False, True])
def test_dense_equals_sparse(pool, batch, ratio, tap_first, monkeypatch):
    if tap_first:
        monkeypatch.setattr(torch_ref, '_TAP_FIRST_MACS', 0)
    model = selds_model(pool=pool).eval()
    g = torch.Generator().manual_seed(batch)
    masks = random_cell_mask(batch, 4, 8, ratio, generator=g)
    force_mask(model, masks=masks)
    x = torch.randn(batch, 3, 64, 128, generator=g)
    outs = {}
    with torch.no_grad():
        for execution in ('dense', 'sparse'):
            model.backbone.execution = execution
            outs[execution] = model(x, mode='tensor')
    close(outs['sparse'], outs['dense'])
    # the selection changed the head's output against the stock head
    ref = dense_model(model, OS8, (1, 12, 24, 36))
    with torch.no_grad():
        stock = ref.decode_head(tuple(model.extract_feat(x)))
    assert not torch.allclose(stock, outs['dense'], atol=1e-3)


def test_dense_backbone_input_is_plain_aspp_head():
    head = randomize_(MODELS.build(head_cfg())).eval()
    ref = ASPPHead(**{k: v for k, v in head_cfg().items() if k != 'type'})
    ref.load_state_dict(head.state_dict())
    ref.eval()
    feats = tuple(torch.randn(2, c, 8, 16) for c in (16, 32, 64, 128))
    with torch.no_grad():
        assert torch.equal(head(feats), ref(feats))


def test_bad_inputs():
    with pytest.raises(ValueError, match='even'):
        MODELS.build(head_cfg((1, 3, 6)))
    bb = selds_backbone().eval()
    with torch.no_grad():
        outs = bb(torch.randn(1, 3, 64, 128))
    head = MODELS.build(dict(head_cfg(), in_channels=64)).eval()
    with pytest.raises(ValueError, match='128 channels, in_channels=64'):
        head(outs)
    fake = SelectiveOutputs(
        outs[:3] + (torch.randn(1, 64, 8, 16), ), outs.mixed)
    with pytest.raises(ValueError, match='not the last output'):
        head(fake)
    head = MODELS.build(dict(head_cfg(), in_index=2, in_channels=64)).eval()
    with pytest.raises(ValueError, match='last stage'):
        head(outs)
    with pytest.raises(ValueError, match='MixedFeature'):
        SelectiveOutputs(outs, mixed=outs[-1])


# --------------------------------------------------------------- training
def test_head_gradient_reaches_the_mask():
    model = selds_model().train()
    model.backbone.execution = 'dense'
    g = torch.Generator().manual_seed(0)
    mask = random_cell_mask(2, 4, 8, 0.5, generator=g).requires_grad_()
    x = torch.randn(2, 3, 64, 128, generator=g)
    ref = dense_model(model, OS8, (1, 12, 24, 36)).train()
    grads = []
    for head in (model.decode_head, ref.decode_head):
        torch.manual_seed(0)  # the same dropout
        feats = model.backbone(x, ds_mask=mask)
        out = head(feats if head is model.decode_head else tuple(feats))
        grads.append(torch.autograd.grad(out.square().mean(), mask)[0])
    assert grads[0].abs().sum() > 0
    # the head's blends add their own term to the mask's gradient
    assert not torch.allclose(grads[0], grads[1], atol=1e-8)


def test_loss_backward_reaches_mask_head_and_head():
    model = selds_model().train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 128, generator=g)
    losses = model.loss(x, data_samples(2, 5, g))
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert 0 < model.backbone.last_ratio < 1
    for name in ('backbone.mask_head', 'decode_head.aspp_modules',
                 'decode_head.image_pool', 'decode_head.bottleneck',
                 'decode_head.conv_seg'):
        grads = [p.grad for n, p in model.named_parameters()
                 if n.startswith(name) and p.requires_grad]
        assert grads and all(gr is not None for gr in grads), name
        assert sum(float(gr.abs().sum()) for gr in grads) > 0, name


# ---------------------------------------------------------------- configs
def test_config_loads_mmseg_deeplabv3_state_dict():
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs', 'demo',
        'deeplabv3-selds-prop2-head_r18-d8_1xb8-400it_synthcity-128x256.py'))
    cfg.model.pretrained = None
    model = MODELS.build(cfg.model)
    assert isinstance(model.neck, SelectivePoolingNeck)
    assert isinstance(model.decode_head, SelDSASPPHead)
    dense = Config.fromfile(osp.join(
        ROOT, 'configs', 'demo', 'deeplabv3_r18-d8_1xb8-400it_synthcity-'
        '128x256.py'))
    dense.model.pretrained = None
    state = MODELS.build(dense.model).state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    assert missing and all(k.startswith(('backbone.mask_head.',
                                         'backbone.pooling.'))
                           for k in missing)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 128), mode='tensor')
    assert out.shape == (1, 19, 8, 16)
    # one training step of the config's SelDSEncoderDecoder (sparsity loss,
    # ds_ratio) reaches the mask head and the selective head
    model.train()
    g = torch.Generator().manual_seed(0)
    losses = model.loss(torch.randn(2, 3, 64, 128, generator=g),
                        data_samples(2, 19, g))
    assert 'ds_ratio' in losses
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    for name in ('backbone.mask_head', 'backbone.pooling', 'decode_head'):
        grads = [p.grad for n, p in model.named_parameters()
                 if n.startswith(name) and p.requires_grad]
        assert grads and all(gr is not None for gr in grads), name


def test_dense_equals_sparse_gradients():
    """I3 for input and weight gradients through the head (eval norms)."""
    model = selds_model(pool='adaptive').eval()
    g = torch.Generator().manual_seed(3)
    force_mask(model, masks=random_cell_mask(2, 4, 8, 0.5, generator=g))
    x = torch.randn(2, 3, 64, 128, generator=g)
    params = [model.decode_head.bottleneck.conv.weight,
              model.decode_head.aspp_modules[2].conv.weight,
              model.decode_head.image_pool[1].conv.weight]
    grads = {}
    for execution in ('dense', 'sparse'):
        model.backbone.execution = execution
        inp = x.clone().requires_grad_()
        out = model(inp, mode='tensor')
        grads[execution] = torch.autograd.grad(
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
            [inp] + params)
    for d, s in zip(grads['dense'], grads['sparse']):
        assert d.abs().sum() > 0
        close(s, d)


def test_sparse_outputs_are_densified_only_when_read(monkeypatch):
    """In sparse inference the stage-3/4 outputs stay mixed until a head
    reads them (a selective decode head reads none of them)."""
    bb = selds_backbone().eval()
    x = torch.randn(1, 3, 64, 128)
    calls = []
    densify = MixedFeature.densify
    monkeypatch.setattr(MixedFeature, 'densify', lambda self: calls.append(
        self) or densify(self))
    with torch.no_grad():
        outs = bb(x)
        assert calls == [] and outs.output_shape(-1) == outs.mixed.shape
        last = outs[-1]
        assert len(calls) == 1 and outs[-1] is last  # kept
        dense = list(outs)  # iteration reads every output
        assert len(calls) == 2 and dense[-1] is last
        a, b, c, d = outs
        assert d is last and len(calls) == 2
        assert type(outs[2:]) is tuple and outs[2:][1] is last
        assert (outs + (x, ))[-1] is x and (outs + (x, ))[3] is last
        twin = bb(x)
        twin.mixed.data.add_(1)  # changed in place before it was read
        with pytest.raises(RuntimeError, match='changed in place'):
            twin[-1]
    with pytest.raises(ValueError, match='tensors or MixedFeatures'):
        SelectiveOutputs([x, 'stage 2'])


def test_sparse_forward_releases_the_workspace():
    """The im2col workspace lives only during a forward: the backbone
    releases it at its end, the selective head at its end too."""
    from mmselds.ops.kernels import torch_ref
    model = selds_model(pool='stride').eval()
    force_mask(model, masks=random_cell_mask(
        1, 4, 8, 0.5, generator=torch.Generator().manual_seed(0)))
    model.backbone.execution = 'sparse'
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        feats = model.extract_feat(x)
        assert torch_ref._WORKSPACE == {}  # the backbone's released
        model.decode_head(feats)
    assert torch_ref._WORKSPACE == {}
