"""Benchmark helpers: forced masks, interleaved timing, peak memory,
dense twins. No timing assertions (the host is noisy), only behaviour."""
import pytest
import torch

from mmselds.analysis.timing import (dense_twin, inference_fn, median,
                                     peak_memory, time_call, time_interleaved)
from mmselds.ops import random_cell_mask
from tests.test_models.test_segmentor import SELDS_CFG
from tests.test_models.utils import randomize_


@pytest.mark.parametrize('ratio', [0, 0.25, 0.5, 1])
def test_random_masks_have_the_exact_ratio(ratio):
    g = torch.Generator().manual_seed(0)
    mask = random_cell_mask(3, 4, 6, ratio, g)
    assert mask.shape == (3, 1, 4, 6)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.flatten(1).sum(1).tolist() == [round(ratio * 24)] * 3


@pytest.mark.parametrize('ratio', [-0.1, 1.5])
def test_random_masks_reject_a_ratio_outside_0_1(ratio):
    with pytest.raises(ValueError, match='ratio must be in'):
        random_cell_mask(1, 2, 2, ratio)


def test_time_interleaved_runs_rounds_in_order_and_reports():
    calls, messages = [], []
    cases = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
    times = time_interleaved(cases, repeat=3, warmup=1,
                             progress=messages.append)
    assert calls == ['a', 'b'] * 4
    assert {k: len(v) for k, v in times.items()} == {'a': 3, 'b': 3}
    assert all(t >= 0 for v in times.values() for t in v)
    assert len(messages) == 4
    assert messages[0].startswith('warm-up round 1/1')
    assert messages[-1].startswith('timed round 3/3')


def test_time_interleaved_one_round_per_input():
    calls = []
    cases = {'a': lambda x: calls.append(('a', x)),
             'b': lambda x: calls.append(('b', x))}
    times = time_interleaved(cases, warmup=2, inputs=[10, 20, 30])
    assert calls == [('a', 10), ('b', 10), ('a', 20), ('b', 20),
                     ('a', 10), ('b', 10), ('a', 20), ('b', 20),
                     ('a', 30), ('b', 30)]
    assert {k: len(v) for k, v in times.items()} == {'a': 3, 'b': 3}
    with pytest.raises(ValueError, match='repeat or inputs'):
        time_interleaved(cases)


@pytest.mark.parametrize('device', ['cpu', torch.device('cpu')])
def test_time_call_times_one_call_with_its_arguments(device):
    calls = []
    seconds = time_call(lambda *a: calls.append(a), 1, 2, device=device)
    assert calls == [(1, 2)]
    assert seconds >= 0
    times = time_interleaved({'a': lambda: None}, repeat=5, device=device)
    assert len(times['a']) == 5 and median(times['a']) >= 0


def test_peak_memory_counts_live_tensors():
    n = 1 << 20

    def two_live():
        a = torch.ones(n)  # 4 MiB
        b = torch.ones(n)  # 4 MiB, both alive
        return a.sum() + b.sum()

    def one_at_a_time():
        for _ in range(2):
            torch.ones(n).sum()

    two = peak_memory(two_live)
    one = peak_memory(one_at_a_time)
    assert two >= 2 * 4 * n
    assert 4 * n <= one < 2 * 4 * n


def test_dense_twin_holds_the_selective_weights():
    from mmengine.config import Config
    from mmseg.registry import MODELS
    cfg = Config.fromfile(SELDS_CFG).model
    cfg.pop('data_preprocessor')
    model = randomize_(MODELS.build(cfg)).eval()
    x = torch.randn(1, 3, 64, 128)
    for os in (8, 16):
        twin = dense_twin(cfg, model, os)
        assert type(twin.backbone).__name__ == 'ResNetV1c'
        assert twin.backbone.strides[2] == (2 if os == 16 else 1)
    twin8 = dense_twin(cfg, model, 8)
    ones = torch.zeros(1, 1, 4, 8)  # all full resolution
    sel = inference_fn(model, x, 'model', ones)()
    dense = inference_fn(twin8, x, 'model')()
    torch.testing.assert_close(sel, dense, rtol=1e-4, atol=1e-4)


def test_optimised_dense_twin_folds_every_norm_and_keeps_outputs():
    """The optimised baseline of benchmark.py --compare: BatchNorms folded
    into convs (backbone and heads), channels-last, same logits."""
    import copy

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from mmselds.analysis.timing import (dense_twin, inference_fn,
                                         optimise_dense)
    from tests.helpers import SELDS_DEMO
    init_default_scope('mmseg')
    cfg = Config.fromfile(SELDS_DEMO)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    for m in model.modules():  # statistics far from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    for os_ in (8, 16):
        twin = dense_twin(cfg.model, model.eval(), os_)
        fast = optimise_dense(copy.deepcopy(twin))
        norms = [m for m in fast.modules()
                 if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms == []
        conv = fast.backbone.layer1[0].conv1
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        x = torch.randn(1, 3, 64, 128)
        expected = inference_fn(twin, x, 'model')()
        got = inference_fn(fast, x.contiguous(
            memory_format=torch.channels_last), 'model')()
        torch.testing.assert_close(got, expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item())
