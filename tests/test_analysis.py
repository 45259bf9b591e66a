"""I4: counted MACs of a selective forward equal the per-layer formula, and
agree with mmengine's counter on the dense limits."""
import pytest
import torch
from mmengine.analysis import FlopAnalyzer

from mmselds.analysis import (backbone_macs, dense_reference_macs, module_macs,
                              selective_stage_macs)
from mmselds.models import CADMaskHead, DepthwiseMaskHead, mask_head_macs
from tests import reference as ref
from tests.helpers import count_pooled_values
from tests.test_models.utils import OS16, mmseg_resnet, selds_backbone

SIZE = (64, 96)


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('pool', ['stride', 'adaptive'])
@pytest.mark.parametrize('density', [0.0, 0.3, 0.5, 1.0])
def test_executed_macs_equal_the_formula(depth, pool, density, monkeypatch):
    """torch's FLOP counter on the sparse forward (convs) plus the pooled
    values it computes count exactly the multiply-adds the formula predicts
    from the mask."""
    model = selds_backbone(depth, pool=pool).eval()
    mask = ref.random_mask(1, 4, 6, density,
                           torch.Generator().manual_seed(1))
    pooled = count_pooled_values(monkeypatch)
    executed = module_macs(lambda x: model(x, ds_mask=mask),
                           torch.zeros(1, 3, *SIZE))
    formula = backbone_macs(model, SIZE, [float(mask.mean())])
    assert executed + pooled.macs == formula.total
    assert pooled.macs == formula.pooling


def test_formula_is_linear_in_ratio():
    model = selds_backbone(50, pool='stride')
    totals = [backbone_macs(model, SIZE, [s]).total for s in (0, 0.5, 1)]
    assert totals[0] > totals[1] > totals[2]
    assert totals[1] == pytest.approx((totals[0] + totals[2]) / 2)
    parts = selective_stage_macs(model, (8, 12), 12)  # half of 24 cells
    assert parts.stages34_full > 0 and parts.stages34_down > 0


@pytest.mark.parametrize('depth', [18, 50])
def test_dense_limits_agree_with_mmengine_counter(depth):
    model = selds_backbone(depth, pool='stride')
    x = torch.zeros(1, 3, *SIZE)
    refs = dense_reference_macs(model, SIZE)
    head = mask_head_macs(model.mask_head, 8, 12)
    for ratio, layout, name in ((0.0, None, 'OS8'), (1.0, OS16, 'OS16')):
        reference = mmseg_resnet(model, layout) if layout else \
            mmseg_resnet(model)
        mmengine_conv = FlopAnalyzer(reference, (x, )).by_operator()['conv']
        ours = backbone_macs(model, SIZE, [ratio])
        assert ours.total - head == mmengine_conv == refs[name]


def test_mask_head_counts():
    for head in (CADMaskHead(512), DepthwiseMaskHead(512)):
        assert mask_head_macs(head, 16, 32) == module_macs(
            head, torch.zeros(1, 512, 16, 32))


@pytest.mark.parametrize('ratio', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('tap_first', [False, True])
def test_selective_head_macs_follow_the_mask(ratio, tap_first, monkeypatch):
    """I4 for the selective ASPP head: the multiply-adds torch counts in its
    sparse forward equal what the head's layers count under the mask
    (``SelDSASPPHead.selective_macs``), which the whole-model count uses,
    whichever way the kernel multiplies (im2col, or tap first as the
    full-size head does)."""
    from mmselds.ops.kernels import torch_ref
    if tap_first:
        monkeypatch.setattr(torch_ref, '_TAP_FIRST_MACS', 0)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from torch.utils.flop_counter import FlopCounterMode

    from mmselds.analysis import has_selective_head, model_macs
    from mmselds.ops import random_cell_mask
    from tests.helpers import DEMO
    init_default_scope('mmseg')
    cfg = Config.fromfile(f'{DEMO}/deeplabv3-selds-prop2-head_r18-d8_'
                          '1xb8-400it_synthcity-128x256.py')
    model = MODELS.build(cfg.model).eval()
    assert has_selective_head(model)
    size = (128, 256)
    mask = random_cell_mask(1, 8, 16, ratio, torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.neck(model.backbone(torch.randn(1, 3, *size),
                                          ds_mask=mask))
        with FlopCounterMode(display=False) as counter:
            model.decode_head(feats)
    executed = counter.get_total_flops() // 2
    counted = model_macs(model, size, [float(mask.mean())])['decode_head']
    assert executed == counted
    if ratio == 1.0:  # far below the dense OS8 head
        dense = model_macs(model, size, [0.0])['decode_head']
        assert counted < 0.3 * dense


def test_dense_models_count_their_heads_at_their_own_stride():
    """mmseg's dense OS8 and OS16 DeepLabV3 (the demo's): the whole-model
    count of each equals the twin reference the selective model is compared
    with, the OS16 head at OS16 (a quarter of the positions)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from mmselds.analysis import model_macs, reference_macs
    from tests.helpers import DEMO
    init_default_scope('mmseg')
    size = (128, 256)
    build = (lambda name: MODELS.build(Config.fromfile(
        f'{DEMO}/{name}_synthcity-128x256.py').model))
    selective = build('deeplabv3-selds-prop2-head_r18-d8_1xb8-400it')
    refs = reference_macs(selective, size)
    for name, os_ in (('OS8', 8), ('OS16', 16)):
        dense = model_macs(build(f'deeplabv3_r18-d{os_}_1xb8-400it'), size)
        assert dense['decode_head'] == refs[name]['decode_head']
        assert dense['total'] == refs[name]['total']
    # a quarter of the positions (the image-pool branch: one either way)
    assert 0.25 < refs['OS16']['decode_head'] / refs['OS8']['decode_head'] \
        < 0.26
