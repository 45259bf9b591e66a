import pytest
import torch

from mmselds.ops import SelectivePooling, as_pooling
from tests import reference as ref


@pytest.mark.parametrize('mode', ['stride', 'avg', 'max', 'adaptive'])
def test_map_and_rows_agree_with_reference(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 8, generator=g)
    pool = SelectivePooling(mode, channels=3)
    if mode == 'adaptive':
        with torch.no_grad():
            pool.logits.normal_(generator=g)
    logits = pool.logits.detach() if mode == 'adaptive' else None
    expected = ref.pool(x, mode, logits)
    torch.testing.assert_close(pool(x), expected)
    quads = torch.stack(ref.quads(x), -1)  # (N, C, h, w, 4)
    rows = quads.permute(0, 2, 3, 4, 1).reshape(-1, 4, 3)
    torch.testing.assert_close(
        pool.pool_rows(rows), expected.permute(0, 2, 3, 1).reshape(-1, 3))


def test_adaptive_starts_as_average_and_learns():
    x = torch.randn(1, 4, 4, 4)
    pool = SelectivePooling('adaptive', channels=4)
    torch.testing.assert_close(pool(x), torch.nn.functional.avg_pool2d(x, 2))
    pool(x).square().sum().backward()
    assert pool.logits.grad is not None and pool.logits.grad.abs().sum() > 0


def test_constant_cells_pool_to_their_value():
    """Every mode maps a constant cell to its value (what lets the dense
    emulation recover lo from V)."""
    lo = torch.randn(1, 2, 3, 3)
    v = ref.up(lo)
    for mode in ('stride', 'avg', 'max'):
        torch.testing.assert_close(SelectivePooling(mode)(v), lo)
    pool = SelectivePooling('adaptive', channels=2)
    with torch.no_grad():
        pool.logits.normal_()
    torch.testing.assert_close(pool(v), lo)


def test_errors():
    with pytest.raises(ValueError, match='unknown pooling mode'):
        SelectivePooling('median')
    with pytest.raises(ValueError, match='needs channels'):
        SelectivePooling('adaptive')
    with pytest.raises(ValueError, match='built for 4 channels'):
        SelectivePooling('adaptive', channels=4)(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match='even H and W'):
        SelectivePooling('avg')(torch.randn(1, 3, 3, 2))
    with pytest.raises(ValueError, match='adaptive pooling has learned'):
        as_pooling('adaptive')
    with pytest.raises(ValueError, match='unknown pooling mode'):
        as_pooling('bilinear')
