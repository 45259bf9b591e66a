import pytest
import torch

from mmselds.models import SparsityLoss


def test_target_loss_pulls_towards_target():
    loss = SparsityLoss('target', target=0.25, loss_weight=2.0)
    mask = torch.full((2, 1, 4, 4), 0.75, requires_grad=True)
    value = loss(mask)
    torch.testing.assert_close(value, torch.tensor(2.0 * 0.5**2))
    value.backward()
    assert (mask.grad > 0).all()  # descent lowers s towards 0.25


def test_target_free_loss_rewards_down_sampling():
    loss = SparsityLoss('target-free', loss_weight=0.1)
    mask = torch.zeros(1, 1, 2, 2, requires_grad=True)
    torch.testing.assert_close(loss(mask), torch.tensor(0.1))
    loss(mask).backward()
    assert (mask.grad < 0).all()  # descent raises s
    assert loss(torch.ones(1, 1, 2, 2)) == 0


def test_errors():
    with pytest.raises(ValueError, match='unknown sparsity loss mode'):
        SparsityLoss('l1')
    with pytest.raises(ValueError, match='needs target'):
        SparsityLoss('target')
    for target in ('0.5', 1.5, True, float('nan')):
        with pytest.raises(ValueError, match='needs target in'):
            SparsityLoss('target', target=target)
    for weight in (-1, float('inf'), float('nan'), '1', None):
        with pytest.raises(ValueError, match=r'loss_weight must be a number '
                           r'>= 0 \(0 turns the loss off\), got'):
            SparsityLoss('target-free', loss_weight=weight)
    assert SparsityLoss('target-free', loss_weight=0)(
        torch.zeros(1, 1, 2, 2)) == 0
    with pytest.raises(ValueError, match='takes no target'):
        SparsityLoss('target-free', target=0.5)
    with pytest.raises(ValueError, match='must contain "loss"'):
        SparsityLoss('target-free', loss_name='sparsity')
    with pytest.raises(ValueError, match='NaN'):
        SparsityLoss('target-free')(torch.full((1, 1, 2, 2), float('nan')))
