"""Every config in configs/ resolves (mmseg:: bases included) and builds its
model without data."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmseg.registry import MODELS

import mmselds  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                         recursive=True) if '_base_' not in p)


def test_configs_found():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize('path', CONFIGS,
                         ids=[osp.basename(p) for p in CONFIGS])
def test_config_builds(path):
    cfg = Config.fromfile(path)
    cfg.model.pretrained = None
    model = MODELS.build(cfg.model)
    if 'selds' in osp.basename(path):
        assert type(model).__name__ == 'SelDSEncoderDecoder'
        assert type(model.backbone).__name__ == 'SelDSResNetV1c'
        assert cfg.custom_imports['imports'] == ['mmselds']
        names = [m['type'] for m in cfg.val_evaluator]
        assert names == ['IoUMetric', 'DownsampleRatioMetric']
        # a fixed threshold would override the trained-ratio rule (I6)
        assert cfg.model.backbone.mask_head.get('threshold') is None
        assert model.backbone.mask_head.test_threshold() is None
        hooks = [h['type'] for h in cfg.custom_hooks]
        assert {'CheckLoadFromHook', 'ExactResumeHook'} <= set(hooks)
        assert cfg.tta_model.type == 'SelDSTTAModel'
        assert cfg.visualizer.type == 'SelDSLocalVisualizer'
        assert cfg.visualizer.vis_backends  # mmseg's, kept
    assert cfg.model.data_preprocessor.test_cfg == dict(size_divisor=16)
