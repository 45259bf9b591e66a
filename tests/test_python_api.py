"""mmselds.apis: mmseg's Python inference API (init_model,
inference_model, MMSegInferencer) with the project's checkpoints:
the checkpoint's mask decision, class names, strict loading, named
errors."""
import copy

import numpy as np
import pytest
import torch

from tests.helpers import SELDS_DEMO

IMAGE = (np.random.default_rng(0).random((128, 256, 3)) * 255).astype(
    np.uint8)
MASK_HEAD = 'backbone.mask_head.'


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """The demo selective model, random weights, saved as a runner does;
    the mask head's calibrated threshold is 0 (every cell down-sampled:
    the expected-ratio rule of an uncalibrated head would give about
    half), with made-up class names in the meta; and a copy with one
    tensor of another shape."""
    from mmselds.utils.model_io import build_segmentor
    model, _ = build_segmentor(SELDS_DEMO)
    state = model.state_dict()
    state[MASK_HEAD + 'calibrated_threshold'] = torch.tensor(0.0)
    classes = tuple(f'class{i}' for i in range(19))
    meta = {'dataset_meta': {'classes': classes,
                             'palette': [[i, i, i] for i in range(19)]}}
    folder = tmp_path_factory.mktemp('api')
    torch.save({'meta': meta, 'state_dict': state}, folder / 'ok.pth')
    bad = dict(state)
    key = 'decode_head.conv_seg.weight'
    bad[key] = torch.zeros(7, *state[key].shape[1:])
    torch.save({'meta': meta, 'state_dict': bad}, folder / 'bad.pth')
    return folder, classes


def test_init_model_and_inference_model(checkpoints):
    from mmselds.apis import inference_model, init_model
    folder, classes = checkpoints
    model = init_model(SELDS_DEMO, str(folder / 'ok.pth'), device='cpu')
    assert not model.training and model.cfg.model.type == 'SelDSEncoderDecoder'
    assert tuple(model.dataset_meta['classes']) == classes
    result = inference_model(model, IMAGE)
    assert result.pred_sem_seg.data.shape == (1, 128, 256)
    # the checkpoint's decision (calibrated threshold 0: every cell)
    assert model.backbone.mask_head.test_threshold() == 0.0
    assert result.ds_ratio == 1.0
    assert model.backbone.last_mask.shape == (1, 1, 8, 16)
    assert float(model.backbone.last_mask.mean()) == 1.0
    # an option overrides it, as --cfg-options does in the tools
    model = init_model(SELDS_DEMO, str(folder / 'ok.pth'), device='cpu',
                       cfg_options={'model.backbone.mask_head.threshold':
                                    1.0})
    assert inference_model(model, IMAGE).ds_ratio == 0.0


def test_init_model_without_checkpoint_takes_the_config_classes():
    """Class names the checkpoint does not carry come from the config's
    test data set: its metainfo over its class's, through wrappers; the
    Cityscapes fallback (with a warning) only when the config has none
    for the model's number of classes."""
    from mmengine.config import Config
    from mmseg.datasets import CityscapesDataset

    from mmselds.apis import init_model
    from mmselds.utils.config import read_config
    cfg = read_config(SELDS_DEMO)
    before = copy.deepcopy(cfg.to_dict())
    model = init_model(cfg, device='cpu',
                       cfg_options={'model.backbone.execution': 'dense'})
    assert isinstance(cfg, Config) and cfg.to_dict() == before  # a copy
    assert model.backbone.execution == 'dense'
    assert tuple(model.dataset_meta['classes']) == \
        CityscapesDataset.METAINFO['classes']
    mine = tuple(f'mine{i}' for i in range(19))
    dataset = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset.metainfo = dict(classes=mine, palette=[[i] * 3
                                                   for i in range(19)])
    cfg.test_dataloader.dataset = dict(type='RepeatDataset', times=2,
                                       dataset=dataset)
    assert tuple(init_model(cfg, device='cpu').dataset_meta['classes']) == \
        mine
    cfg.test_dataloader.dataset = dict(type='ConcatDataset',
                                       datasets=[dataset, dataset])
    assert tuple(init_model(cfg, device='cpu').dataset_meta['classes']) == \
        mine
    dataset.metainfo = dict(classes=mine[:5])  # not the model's 19
    cfg.val_dataloader.dataset = dataset
    assert tuple(init_model(cfg, device='cpu').dataset_meta['classes']) == \
        CityscapesDataset.METAINFO['classes']


def test_init_model_is_strict(checkpoints, tmp_path):
    from mmselds.apis import init_model
    from mmselds.utils.checkpoint import (CheckpointMismatchError,
                                          InvalidCheckpointError)
    folder, _ = checkpoints
    with pytest.raises(CheckpointMismatchError,
                       match=r'decode_head\.conv_seg\.weight'):
        init_model(SELDS_DEMO, str(folder / 'bad.pth'), device='cpu')
    model = init_model(SELDS_DEMO, str(folder / 'bad.pth'), device='cpu',
                       strict=False)  # loads what fits
    assert float(model.backbone.mask_head.calibrated_threshold) == 0.0
    with pytest.raises(InvalidCheckpointError, match='missing.pth'):
        init_model(SELDS_DEMO, str(tmp_path / 'missing.pth'), device='cpu')


def test_inferencer(checkpoints, tmp_path):
    from mmselds.apis import SelDSInferencer
    from mmselds.utils.checkpoint import CheckpointMismatchError
    folder, classes = checkpoints
    inferencer = SelDSInferencer(SELDS_DEMO, str(folder / 'ok.pth'),
                                 device='cpu', show_progress=False)
    assert tuple(inferencer.model.dataset_meta['classes']) == classes
    result = inferencer(IMAGE, return_datasamples=True)
    assert result.pred_sem_seg.data.shape == (1, 128, 256)
    assert result.ds_ratio == 1.0
    out = inferencer(IMAGE, out_dir=str(tmp_path))
    assert out['predictions'].shape == (128, 256)
    assert list((tmp_path / 'vis').glob('*.jpg'))
    assert list((tmp_path / 'pred').glob('*.png'))
    with pytest.raises(CheckpointMismatchError,
                       match=r'decode_head\.conv_seg\.weight'):
        SelDSInferencer(SELDS_DEMO, str(folder / 'bad.pth'), device='cpu')
    from mmselds.utils.checkpoint import InvalidCheckpointError
    with pytest.raises(InvalidCheckpointError, match='missing.pth'):
        SelDSInferencer(SELDS_DEMO, str(tmp_path / 'missing.pth'),
                        device='cpu')
    # without a checkpoint: the config's class names (mmseg's inferencer
    # takes Cityscapes')
    from mmselds.utils.config import read_config
    cfg = read_config(SELDS_DEMO)
    mine = tuple(f'mine{i}' for i in range(19))
    cfg.test_dataloader.dataset.metainfo = dict(classes=mine)
    bare = SelDSInferencer(cfg, device='cpu', show_progress=False)
    assert tuple(bare.model.dataset_meta['classes']) == mine


def test_readme_snippet_runs(checkpoints, tmp_path, monkeypatch):
    """README.md's "From Python" code, as written, on the test model."""
    import os.path as osp
    import re

    import cv2

    from tests.helpers import ROOT
    readme = open(osp.join(ROOT, 'README.md')).read()
    section = readme[readme.index('**From Python.**'):]
    code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    cv2.imwrite('image.png', IMAGE)
    folder, _ = checkpoints
    scope = {'CONFIG': SELDS_DEMO, 'CHECKPOINT': str(folder / 'ok.pth')}
    exec(compile(code, 'README.md', 'exec'), scope)
    assert scope['result'].ds_ratio == 1.0
    mask = scope['result'].ds_mask.data
    assert mask.shape == (1, ) + IMAGE.shape[:2] and bool((mask == 1).all())
    assert (tmp_path / 'outputs' / 'pred').is_dir()


def test_images_given_as_arrays_are_checked(checkpoints):
    """Arrays that are not (H, W, 3) 8-bit BGR images are a ValueError
    naming the problem (were: 16-bit, boolean and 0-1 float arrays ran to
    wrong logits without a word; other shapes failed inside mmseg, mmcv
    or OpenCV); uint8 and 0-255 float arrays give the same result."""
    from mmselds.apis import SelDSInferencer, inference_model, init_model
    folder, _ = checkpoints
    model = init_model(SELDS_DEMO, str(folder / 'ok.pth'), device='cpu')
    bad = [
        (IMAGE.astype(np.uint16) * 257, r'dtype uint16: .* 8-bit pixel '
         r'values \(uint8, 0-255\); cv2\.imread\(path\) reads a 16-bit'),
        (IMAGE > 127, 'dtype bool'),
        (IMAGE.astype(np.float32) / 255, r'float32 image with all values '
         r'in \[0, 1\] \(largest 0\.996\): .* multiply by 255'),
        (np.dstack([IMAGE, IMAGE[..., :1]]), r'\(128, 256, 4\) has 4 '
         r'channels: .* image\[\.\.\., :3\]'),
        (IMAGE.transpose(2, 0, 1), r'\(3, 128, 256\) looks channels-first'),
        (IMAGE[..., 0], r'\(128, 256\) is single-channel'),
        (np.zeros((0, 0, 3), np.uint8), r'\(0, 0, 3\) is empty'),
        (torch.from_numpy(IMAGE), 'got a torch.Tensor'),
    ]
    for image, message in bad:
        with pytest.raises(ValueError, match=message):
            inference_model(model, image)
        with pytest.raises(ValueError, match=message):
            inference_model(model, [IMAGE, image])
    expected = inference_model(model, IMAGE).seg_logits.data
    as_float = inference_model(model, IMAGE.astype(np.float32))
    torch.testing.assert_close(as_float.seg_logits.data, expected)
    inferencer = SelDSInferencer(SELDS_DEMO, str(folder / 'ok.pth'),
                                 device='cpu', show_progress=False)
    with pytest.raises(ValueError, match='dtype uint16'):
        inferencer(IMAGE.astype(np.uint16) * 257)
    # a model of other input channels (RGB + near infrared) takes its own
    from mmselds.apis import check_image
    from mmselds.apis.inference import input_channels
    assert input_channels(model) == 3
    four = np.dstack([IMAGE, IMAGE[..., :1]])
    check_image(four, 4)
    with pytest.raises(ValueError, match=r'\(128, 256, 3\): the model takes '
                       r'\(H, W, 4\) arrays'):
        check_image(IMAGE, 4)
    check_image(IMAGE[..., 0], 1)
