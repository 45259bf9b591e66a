import re

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmselds.models import CADMaskHead, DepthwiseMaskHead, mask_head_macs


@pytest.mark.parametrize('head_type', [CADMaskHead, DepthwiseMaskHead])
def test_shapes(head_type):
    head = head_type(in_channels=32, channels=(16, 8))
    logits = head(torch.randn(2, 32, 12, 20))
    assert logits.shape == (2, 2, 6, 10)
    with pytest.raises(ValueError, match=r'expects \(N, 32, h, w\)'):
        head(torch.randn(2, 16, 12, 20))
    with pytest.raises(ValueError, match='even OS8 map'):
        head(torch.randn(2, 32, 11, 20))


def counted_macs(head, h, w):
    """Multiply-adds by torch's own FLOP counter (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter:
        head(torch.randn(1, head.in_channels, h, w))
    return counter.get_total_flops() // 2


def test_depthwise_head_is_at_least_80_percent_lighter():
    """DESIGN §6 on the R50/101 stage-2 map of a 1024x2048 input."""
    cad, light = CADMaskHead(512), DepthwiseMaskHead(512)
    h, w = 128, 256
    for count in (mask_head_macs, counted_macs):
        reduction = 1 - count(light, h, w) / count(cad, h, w)
        assert reduction >= 0.80, reduction
    assert mask_head_macs(cad, 16, 32) == counted_macs(cad, 16, 32)
    assert mask_head_macs(light, 16, 32) == counted_macs(light, 16, 32)


def test_training_samples_hard_straight_through_masks():
    head = DepthwiseMaskHead(8, channels=(8, 8), tau=1.0).train()
    logits = torch.zeros(4, 2, 8, 8, requires_grad=True)
    torch.manual_seed(0)
    mask = head.sample(logits)
    assert mask.shape == (4, 1, 8, 8)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    (mask * torch.randn_like(mask)).sum().backward()
    assert logits.grad.abs().sum() > 0
    torch.manual_seed(0)
    torch.testing.assert_close(head.sample(logits), mask)


def test_eval_threshold_trades_ratio():
    head = DepthwiseMaskHead(8, channels=(8, 8)).eval()
    logits = torch.randn(2, 2, 16, 16, generator=torch.Generator()
                         .manual_seed(0))
    ratios = []
    for threshold in (0.0, 0.3, 0.5, 0.7, 1.0):
        head.threshold = threshold
        mask = head.sample(logits)
        torch.testing.assert_close(head.sample(logits), mask)  # deterministic
        ratios.append(mask.mean().item())
    assert ratios == sorted(ratios, reverse=True)
    assert ratios[0] == 1.0 and ratios[-1] == 0.0
    p = head.probability(logits)
    head.threshold = 0.5
    torch.testing.assert_close(head.sample(logits), (p > 0.5).float())


def test_bad_arguments():
    for cls in (CADMaskHead, DepthwiseMaskHead):
        for channels in (32, (32, 16, 8), (32, 0), (32.0, 16), '32',
                         (True, 16)):
            with pytest.raises(ValueError, match=re.escape(
                    f'{cls.__name__}: channels must be two positive hidden '
                    f'widths (c1, c2), e.g. (128, 64), got {channels!r}')):
                cls(8, channels=channels)
        assert cls(8, channels=[4, np.int64(2)]).convs[0] is not None
    for tau in (0, float('nan'), float('inf'), '1', True):
        with pytest.raises(ValueError, match='tau must be a positive number'):
            CADMaskHead(8, tau=tau)
    for t in (np.float32(0.5), np.float64(0.25), 1):  # numbers in [0, 1]
        assert CADMaskHead(8, threshold=t).threshold == float(t)
    with pytest.raises(ValueError, match=r'threshold must be None or a '
                       r'number in \[0, 1\], got 1.5'):
        CADMaskHead(8, threshold=1.5)
    head = CADMaskHead(8)
    with pytest.raises(ValueError, match='threshold must be None'):
        head.threshold = 'high'
    with pytest.raises(ValueError, match='ratio_momentum must be in'):
        CADMaskHead(8, ratio_momentum=0)


def saturated_logits(n=3, h=8, w=8, seed=0):
    """Logits whose P(down-sample) sits in (0.5, 0.6) everywhere, as after a
    short training: a 0.5 threshold down-samples every cell."""
    g = torch.Generator().manual_seed(seed)
    p = 0.5 + 0.1 * torch.rand(n, 1, h, w, generator=g)
    return torch.cat([torch.zeros_like(p), torch.log(p / (1 - p))], 1)


def test_default_decision_matches_the_gumbel_expectation():
    """No threshold, nothing calibrated: the eval mask down-samples as many
    cells as hard Gumbel samples of the same logits do on average, the
    cells of highest P, image by image."""
    head = DepthwiseMaskHead(8, channels=(8, 8)).eval()
    assert head.threshold is None and head.test_threshold() is None
    logits = saturated_logits()
    p = head.probability(logits)
    mask = head.sample(logits)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert (p > 0.5).all()  # the old rule: every cell down-sampled
    torch.manual_seed(0)
    gumbel = torch.stack([
        torch.nn.functional.gumbel_softmax(logits, hard=True, dim=1)[:, 1:2]
        for _ in range(200)]).mean((0, 2, 3, 4))
    for i in range(3):
        k = round(p[i].mean().item() * 64)
        assert mask[i].sum().item() == k
        assert abs(mask[i].mean().item() - gumbel[i].item()) < 0.03
        # the down-sampled cells are the most probable ones
        assert p[i][mask[i] == 1].min() >= p[i][mask[i] == 0].max()
    # per image: the decision does not depend on the rest of the batch
    torch.testing.assert_close(head.sample(logits[1:2]), mask[1:2])
    # a uniformly confident head down-samples accordingly
    sure = torch.tensor([0.0, 8.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    assert head.sample(sure).mean().item() == 1.0
    assert head.sample(-sure).mean().item() == 0.0


def test_threshold_precedence():
    """explicit threshold > calibrated threshold > expected-ratio rule."""
    head = DepthwiseMaskHead(8, channels=(8, 8)).eval()
    logits = saturated_logits()
    p = head.probability(logits)
    assert 'expected ratio' in head.decision_rule()
    head.calibrated_threshold.fill_(0.55)
    torch.testing.assert_close(head.sample(logits), (p > 0.55).float())
    assert 'calibrated' in head.decision_rule()
    head.threshold = 0.5
    assert head.sample(logits).mean().item() == 1.0
    assert 'explicit' in head.decision_rule()
    head.threshold = None
    head.calibrated_threshold.fill_(float('nan'))
    assert head.test_threshold() is None


def test_training_tracks_the_ratio_in_a_saved_buffer():
    head = DepthwiseMaskHead(8, channels=(8, 8), ratio_momentum=0.5).train()
    assert torch.isnan(head.trained_ratio)
    torch.manual_seed(0)
    ratios = [head.sample(saturated_logits(seed=i)).mean().item()
              for i in range(4)]
    # mean over the first 1 / momentum = 2 updates, then momentum 0.5
    expected = (ratios[0] + ratios[1]) / 2
    for r in ratios[2:]:
        expected = 0.5 * expected + 0.5 * r
    assert head.ratio_updates.item() == 4
    assert abs(head.trained_ratio.item() - expected) < 1e-6
    state = head.state_dict()
    assert {'trained_ratio', 'calibrated_threshold',
            'ratio_updates'} <= set(state)
    head.eval().sample(saturated_logits())
    assert head.ratio_updates.item() == 4  # evaluation does not track


def test_non_finite_logits_are_an_error():
    head = DepthwiseMaskHead(8, channels=(8, 8)).eval()
    feat = torch.randn(1, 8, 8, 8)
    feat[0, 0, 3, 3] = float('nan')
    with pytest.raises(FloatingPointError, match='NaN or Inf logits'):
        head(feat)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize('head_type', [CADMaskHead, DepthwiseMaskHead])
def test_logits_are_float32_under_autocast(head_type, dtype):
    """AMP: the layers run in the autocast dtype, the logits (the decision
    and training's Gumbel noise) in float32; the straight-through gradient
    reaches the float32 weights. float64 models stay float64."""
    head = head_type(in_channels=16, channels=(8, 8)).train()
    feat = torch.randn(2, 16, 8, 12)
    with torch.autocast('cpu', dtype=dtype):
        logits = head(feat)
        mask = head.sample(logits)
    assert logits.dtype == mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    (mask * torch.randn_like(mask)).sum().backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all()
                         for g in grads)
    assert head.double()(feat.double()).dtype == torch.float64


@pytest.mark.parametrize('value', [1.7, -0.5])
def test_calibrated_threshold_outside_0_1_is_named(value):
    """A checkpoint's calibrated threshold is checked as the explicit one
    is (was: loaded silently; every cell or none down-sampled)."""
    head = CADMaskHead(8)
    state = head.state_dict()
    state['calibrated_threshold'] = torch.tensor(value)
    head.load_state_dict(state)
    with pytest.raises(ValueError, match='not a probability in'):
        head.test_threshold()
    with pytest.raises(ValueError, match='calibrated threshold'):
        head.decide(saturated_logits())
