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
    with pytest.raises(ValueError, match='tau must be positive'):
        CADMaskHead(8, tau=0)
    with pytest.raises(ValueError, match=r'threshold must be in \[0, 1\]'):
        CADMaskHead(8, threshold=1.5)
