"""SelDSEncoderDecoder: whole-model equality with mmseg's DeepLabV3 in the
all-high case, losses and logs, train_only, ratio metric, load_from check."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.registry import METRICS, MODELS
from mmseg.structures import SegDataSample

import mmselds  # noqa: F401
from tests.test_models.utils import randomize_

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs', 'demo')
OS8_CFG = osp.join(DEMO, 'deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py')
SELDS_CFG = osp.join(
    DEMO, 'deeplabv3-selds-prop2_r18-d8_1xb8-400it_synthcity-128x256.py')


def build(path, **model_options):
    cfg = Config.fromfile(path)
    for key, value in model_options.items():
        cfg.model[key] = value
    return MODELS.build(cfg.model)


def samples(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, h, w),
                                                    generator=g))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w),
                            pad_shape=(h, w), padding_size=[0, 0, 0, 0]))
        out.append(s)
    return out


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
def test_all_high_logits_equal_mmseg_deeplabv3(execution):
    dense = randomize_(build(OS8_CFG))
    ours = build(SELDS_CFG)
    missing, unexpected = ours.load_state_dict(dense.state_dict(),
                                               strict=False)
    assert not unexpected
    assert all(k.startswith(('backbone.mask_head.', 'backbone.pooling.'))
               for k in missing)
    ours.backbone.mask_head.threshold = 1.0  # P > 1 never: all high
    ours.backbone.execution = execution
    dense.eval()
    ours.eval()
    x = torch.randn(2, 3, 64, 128)
    metas = [dict(img_shape=(64, 128))] * 2
    with torch.no_grad():
        expected = dense.encode_decode(x, metas)
        got = ours.encode_decode(x, metas)
    assert ours.backbone.last_ratio == 0.0
    torch.testing.assert_close(got, expected, rtol=1e-4,
                               atol=1e-4 * expected.abs().max().item())


def test_losses_and_logged_ratio():
    model = build(SELDS_CFG).train()
    x = torch.randn(2, 3, 64, 128)
    losses = model.loss(x, samples(2, 64, 128))
    assert 'loss_sparsity' in losses and 'ds_ratio' in losses
    assert not losses['ds_ratio'].requires_grad
    torch.testing.assert_close(losses['ds_ratio'],
                               model.backbone.last_mask.detach().mean())
    # the target-free loss of the demo config: weight * (1 - s)
    weight = model.sparsity_loss.loss_weight
    assert model.sparsity_loss.mode == 'target-free' and weight > 0
    torch.testing.assert_close(losses['loss_sparsity'].detach(),
                               weight * (1 - losses['ds_ratio']))
    total, log_vars = model.parse_losses(losses)
    assert 'ds_ratio' in log_vars
    summed = sum(v for k, v in losses.items() if 'loss' in k
                 and isinstance(v, torch.Tensor))
    torch.testing.assert_close(total, summed)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.backbone.mask_head.parameters())


def test_train_only_freezes_everything_else():
    model = build(SELDS_CFG, train_only=('backbone.mask_head',
                                         'backbone.pooling'))
    model.train()
    for name, p in model.named_parameters():
        assert p.requires_grad == name.startswith(('backbone.mask_head.',
                                                   'backbone.pooling.')), name
    assert model.backbone.training  # holds the mask head: dense training
    assert model.backbone.mask_head.training
    assert not model.backbone.layer3[0].bn1.training
    assert not model.decode_head.training
    before = model.backbone.layer1[0].bn1.running_mean.clone()
    model.loss(torch.randn(2, 3, 64, 128), samples(2, 64, 128))
    torch.testing.assert_close(model.backbone.layer1[0].bn1.running_mean,
                               before)
    with pytest.raises(ValueError, match='unknown modules'):
        build(SELDS_CFG, train_only=('backbone.mask_heads', ))


def test_predict_stores_ratio_for_the_metric():
    model = build(SELDS_CFG).eval()
    data = samples(2, 64, 128)
    with torch.no_grad():
        results = model.predict(torch.randn(2, 3, 64, 128), data)
    ratios = [r.ds_ratio for r in results]
    per_image = model.backbone.last_mask.float().mean((1, 2, 3)).tolist()
    assert ratios == pytest.approx(per_image)
    metric = METRICS.build(dict(type='DownsampleRatioMetric'))
    metric.process({}, [r.to_dict() for r in results])
    assert metric.compute_metrics(metric.results) == {
        'ds_ratio': pytest.approx(sum(per_image) / 2)}
    with pytest.raises(KeyError, match='SelDSEncoderDecoder'):
        metric.process({}, [{}])


def test_needs_a_selective_backbone():
    with pytest.raises(TypeError, match='selective down-sampling backbone'):
        build(SELDS_CFG, backbone=Config.fromfile(OS8_CFG).model.backbone)


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_images_are_an_error(bad):
    """Without the check every pixel became class 0 and the ratio 0.0."""
    from mmengine.logging import MessageHub
    model = build(SELDS_CFG).eval()
    x = torch.randn(2, 3, 64, 128)
    x[1, 0, 5, 7] = bad
    data = samples(2, 64, 128)
    data[1].set_metainfo(dict(img_path='data/leftImg8bit/val/b.png'))
    with pytest.raises(FloatingPointError, match=r'NaN or Inf \(inference\):'
                       r' data/leftImg8bit/val/b.png$'):
        with torch.no_grad():
            model.predict(x, data)
    # in training the error names the iteration mmengine is at
    MessageHub.get_current_instance().update_info('iter', 41)
    with pytest.raises(FloatingPointError,
                       match=r'training iteration 42\): image 1 of the'):
        model.train().loss(x, samples(2, 64, 128))
    # finite images pass
    with torch.no_grad():
        model.eval().predict(x.nan_to_num(0, 0, 0), data)


def test_slide_inference_crops_are_checked():
    """Slide inference with a crop_size that is not a multiple of 16 is an
    error naming crop_size and a size that fits, at build and when
    test_cfg changes later (was: the backbone's input-size error, which
    advises size_divisor, already set); a fitting crop slides and gives
    each image one ratio."""
    for crop in ((60, 120), (64, 0), 64):
        with pytest.raises(ValueError, match='test_cfg: .*crop_size'):
            build(SELDS_CFG, test_cfg=dict(mode='slide', crop_size=crop,
                                           stride=(32, 64)))
    with pytest.raises(ValueError, match=r'crop_size=\(60, 120\) for slide '
                       r'inference; .* e\.g\. crop_size=\(64, 128\)'):
        build(SELDS_CFG, test_cfg=dict(mode='slide', crop_size=(60, 120),
                                       stride=(30, 60)))
    model = build(SELDS_CFG, test_cfg=dict(mode='slide', crop_size=(32, 64),
                                           stride=(16, 32))).eval()
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        results = model.predict(x, samples(2, 64, 128))
    assert results[0].pred_sem_seg.data.shape == (1, 64, 128)
    assert 0.0 <= results[0].ds_ratio <= 1.0
    model.test_cfg.crop_size = (40, 64)
    with pytest.raises(ValueError, match=r'e\.g\. crop_size=\(48, 64\)'):
        model.predict(x, samples(2, 64, 128))


def test_sparse_execution_trains_what_train_only_leaves_trainable():
    """train_only freezes the modules it does not train after the
    backbone's train(): sparse execution is checked once they are frozen,
    so training only the decode head on a frozen sparse backbone works,
    and training the backbone's stages 3-4 sparse is refused."""
    from mmselds.ops import SparseTrainingError
    model = build(SELDS_CFG, train_only=('decode_head',))
    model.backbone.execution = 'sparse'
    model.train()
    assert not model.backbone.layer3[0].bn1.training
    losses = model.loss(torch.randn(2, 3, 64, 128), samples(2, 64, 128))
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.decode_head.conv_seg.weight.grad is not None
    model = build(SELDS_CFG, train_only=('backbone',))
    model.backbone.execution = 'sparse'
    with pytest.raises(SparseTrainingError, match='layer3.0.bn1'):
        model.train()


def test_each_result_carries_its_mask_at_the_original_size():
    """``ds_mask``: the cells of the pass on the image's pixels, through
    the un-padding, flip and resize the logits get (checked here pixel by
    pixel against indices computed by hand)."""
    model = build(SELDS_CFG).eval()
    data = samples(2, 64, 128)
    # image 0: resized from 40x72 and padded by 16 rows at the bottom and
    # 32 columns at the right; image 1: flipped, no padding
    data[0].set_metainfo(dict(img_shape=(48, 96), ori_shape=(40, 72),
                              padding_size=[0, 32, 0, 16]))
    data[0].gt_sem_seg = PixelData(data=torch.zeros(1, 40, 72).long())
    data[1].set_metainfo(dict(flip=True, flip_direction='horizontal'))
    with torch.no_grad():
        results = model.predict(torch.randn(2, 3, 64, 128), data)
    cells = model.backbone.last_mask.float()
    assert 0 < float(cells.mean()) < 1  # both kinds of cells to place
    pixels = cells.repeat_interleave(16, 2).repeat_interleave(16, 3)
    # nearest at pixel centres, as the logits' bilinear resize maps them
    rows = ((torch.arange(40) + 0.5) * 48 / 40).floor().long()
    cols = ((torch.arange(72) + 0.5) * 96 / 72).floor().long()
    first = results[0].ds_mask.data
    assert first.shape == results[0].pred_sem_seg.data.shape == (1, 40, 72)
    assert torch.equal(first[0], pixels[0, 0][rows][:, cols])
    second = results[1].ds_mask.data
    assert torch.equal(second[0], pixels[1, 0].flip(1))
    assert float(second.mean()) == pytest.approx(results[1].ds_ratio)
    # without data samples the mask stays at the input's size, as the
    # logits do
    with torch.no_grad():
        bare = model.predict(torch.randn(1, 3, 64, 128))
    assert bare[0].ds_mask.data.shape == (1, 64, 128)


def test_slide_inference_averages_the_windows_masks():
    """Same logits as mmseg's slide inference; ``ds_mask`` at each pixel
    is the mean of the masks of the windows that cover it, which here are
    run one by one."""
    from mmseg.models.segmentors import EncoderDecoder
    crop, stride = (32, 64), (16, 32)
    model = build(SELDS_CFG, test_cfg=dict(mode='slide', crop_size=crop,
                                           stride=stride)).eval()
    x = torch.randn(2, 3, 64, 128)
    metas = [dict(img_shape=(64, 128), ori_shape=(64, 128))] * 2
    with torch.no_grad():
        results = model.predict(x, samples(2, 64, 128))
        got = model.slide_inference(x, [dict(m) for m in metas])
        expected = EncoderDecoder.slide_inference(model, x,
                                                  [dict(m) for m in metas])
        total = torch.zeros(2, 1, 64, 128)
        count = torch.zeros(2, 1, 64, 128)
        for y in (0, 16, 32):
            for x0 in (0, 32, 64):
                model.encode_decode(x[:, :, y:y + 32, x0:x0 + 64],
                                    [dict(img_shape=crop)] * 2)
                cells = model.backbone.last_mask.float()
                total[:, :, y:y + 32, x0:x0 + 64] += cells.repeat_interleave(
                    16, 2).repeat_interleave(16, 3)
                count[:, :, y:y + 32, x0:x0 + 64] += 1
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    want = total / count
    assert 0 < float(want.mean()) < 1
    for i, result in enumerate(results):
        torch.testing.assert_close(result.ds_mask.data, want[i], rtol=0,
                                   atol=1e-6)
    # one window as large as the image: the whole-image mask
    whole = build(SELDS_CFG).eval()
    whole.load_state_dict(model.state_dict())
    model.test_cfg.crop_size, model.test_cfg.stride = (64, 128), (64, 128)
    with torch.no_grad():
        one = model.predict(x, samples(2, 64, 128))
        ref = whole.predict(x, samples(2, 64, 128))
    for a, b in zip(one, ref):
        assert torch.equal(a.ds_mask.data, b.ds_mask.data)


def test_labels_that_are_not_classes_are_an_error():
    """Label values that are neither a class nor ignore_index (Cityscapes'
    label IDs instead of training IDs) are an error naming the file and
    the values, in training (was: "Target 23 is out of bounds" from
    inside torch's cross-entropy) and testing (was: mIoU 0, silently);
    in testing a label map of another size than its image too (was:
    IndexError from mmseg's IoUMetric)."""
    from mmselds.datasets import InvalidLabelError
    model = build(SELDS_CFG)
    x = torch.randn(2, 3, 64, 128)
    data = samples(2, 64, 128)
    data[0].gt_sem_seg.data[0, :4, :4] = 255  # ignore: fine
    model.train().loss(x, data)
    data[1].gt_sem_seg.data[0, 0, :3] = torch.tensor([23, 26, 19])
    data[1].set_metainfo(dict(
        seg_map_path='gtFine/val/a/a_gtFine_labelIds.png'))
    with pytest.raises(InvalidLabelError, match=(
            r'^gtFine/val/a/a_gtFine_labelIds\.png holds label values 19, '
            r'23, 26: the model has 19 classes \(labels 0-18, 255 = ignore\);'
            r" Cityscapes' \*_gtFine_labelIds\.png hold label IDs")):
        model.loss(x, data)
    model.eval()
    with torch.no_grad(), pytest.raises(InvalidLabelError,
                                        match='holds label values 19'):
        model.predict(x, data)
    data = samples(2, 64, 128)
    data[0].set_metainfo(dict(ori_shape=(32, 64), img_path='a.png',
                              seg_map_path='a_label.png'))
    with torch.no_grad(), pytest.raises(InvalidLabelError, match=(
            r'^a_label\.png is 128x64 pixels, its image a\.png 64x32: a '
            'label map must be the size of its image')):
        model.predict(x, data)
    data[0].set_metainfo(dict(ori_shape=(64, 128)))
    with torch.no_grad():
        model.predict(x, data)  # labels of the image's size pass
        model.predict(x)  # no labels: nothing to check
    # a binary head with one output (num_classes=1): labels 0 and 1
    binary = build(SELDS_CFG, decode_head=dict(
        Config.fromfile(SELDS_CFG).model.decode_head, num_classes=1,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True)))
    data = samples(2, 64, 128)
    for sample in data:
        sample.gt_sem_seg.data = sample.gt_sem_seg.data % 2
    binary.train().loss(x, data)
    data[0].gt_sem_seg.data[0, 0, 0] = 2
    with pytest.raises(InvalidLabelError, match=r'holds label values 2: the '
                       r'model has 2 classes \(labels 0-1, 255 = ignore\)'):
        binary.loss(x, data)


def test_padding_sizes_and_test_mode_are_checked_at_build():
    """Sizes the data preprocessor pads to that are not multiples of 16
    (a crop size of 100x200) are an error at build naming the setting and
    a size that fits (was: a traceback from the backbone at the first
    iteration, after the runner was built); so is an unknown test mode
    (was: mmseg's AssertionError at the first image)."""
    cfg = Config.fromfile(SELDS_CFG)
    for key, value, fit in (('size', (100, 200), r'size=\(112, 208\) \(and '
                             r'the crop_size of the training pipeline\)'),
                            ('test_cfg', dict(size_divisor=8),
                             'size_divisor=16'),
                            ('test_cfg', dict(size=(64, 120)),
                             r'size=\(64, 128\)')):
        options = dict(cfg.model.data_preprocessor, **{key: value})
        if key == 'test_cfg':
            name = f'test_cfg.{next(iter(value))}'
            value = next(iter(value.values()))
        else:
            name = key
        with pytest.raises(ValueError, match=(
                rf'^data_preprocessor\.{name}={re.escape(repr(value))}: '
                r'inputs are padded to it, and a selective backbone needs '
                rf'sides that are multiples of 16 .*: e\.g\. {fit}$')):
            build(SELDS_CFG, data_preprocessor=options)
    build(SELDS_CFG, data_preprocessor=dict(cfg.model.data_preprocessor,
                                            size=(96, 192)))
    with pytest.raises(ValueError, match=r"^test_cfg: mode='foo'; inference "
                       r"is 'whole' or 'slide'"):
        build(SELDS_CFG, test_cfg=dict(mode='foo'))
