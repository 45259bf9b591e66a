"""The selective-layer runner: layers on a mixed feature, their BatchNorm
folding, their errors, and the multiply-adds they report."""
import copy

import pytest
import torch
from mmcv.cnn import ConvModule
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from mmselds.ops import (CellMask, MixedFeature, SelectivePooling,
                         clear_sparse_weights, dense_layers, flatten_layers,
                         fold_batch_norm, layers_macs, run_aspp, run_layers,
                         run_residual_block, sparse_weights)
from tests import reference as ref
from tests.helpers import count_pooled_values
from tests.test_models.utils import randomize_, selds_backbone


def conv_module(c_in, c_out, k, dilation=1, act='ReLU'):
    return ConvModule(c_in, c_out, k, padding=0 if k == 1 else dilation,
                      dilation=dilation, norm_cfg=dict(type='BN'),
                      act_cfg=dict(type=act) if act else None)


def layers(seed=0):
    torch.manual_seed(seed)
    mods = [conv_module(5, 8, 3, 4), conv_module(8, 6, 1, act='GELU'),
            nn.Sequential(nn.Conv2d(6, 7, 3, padding=2, dilation=2),
                          nn.BatchNorm2d(7), nn.ReLU(), nn.Identity())]
    for m in mods:
        randomize_(m, seed)
    return [m.eval() for m in mods]


def run(x, mask, mods, execution, pool='avg'):
    feat = MixedFeature.from_dense(x, CellMask(mask, execution), pool)
    return run_layers(feat, mods, pool_for=lambda conv: pool).densify()


@pytest.mark.parametrize('density', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('n', [1, 2])
def test_sparse_equals_dense_emulation(density, n):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 5, 8, 12, generator=g)
    mask = ref.random_mask(n, 4, 6, density, g)
    mods = layers()
    with torch.no_grad():
        dense = run(x, mask, mods, 'dense')
        sparse = run(x, mask, mods, 'sparse')
    assert dense.shape == (n, 7, 8, 12)
    torch.testing.assert_close(sparse, dense, atol=1e-4, rtol=1e-4)


def test_all_high_equals_the_modules():
    x = torch.randn(2, 5, 8, 12)
    mods = layers()
    with torch.no_grad():
        expected = nn.Sequential(*mods)(x)
        for execution in ('dense', 'sparse'):
            got = run(x, torch.zeros(2, 1, 4, 6), mods, execution)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_sparse_folds_eval_batch_norm_into_the_conv(monkeypatch):
    import mmselds.ops.runner as runner
    calls, apply = [], runner.selective_apply
    monkeypatch.setattr(runner, 'selective_apply',
                        lambda f, m: calls.append(type(m).__name__) or
                        apply(f, m))
    x = torch.randn(1, 5, 8, 12)
    mask = ref.random_mask(1, 4, 6, 0.5, torch.Generator().manual_seed(0))
    run(x, mask, layers(), 'sparse')
    assert 'BatchNorm2d' not in calls  # every norm folded
    calls.clear()
    run(x, mask, layers(), 'dense')
    assert calls.count('BatchNorm2d') == 3  # the modules themselves


def test_gradients_reach_the_mask_through_the_layers():
    x = torch.randn(1, 5, 8, 12)
    mask = ref.random_mask(1, 4, 6, 0.5,
                           torch.Generator().manual_seed(0)).requires_grad_()
    out = run(x, mask, layers(), 'dense')
    out.square().sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


def test_stride_entrance_on_a_dense_map():
    """A dense map goes through plain modules up to the first 3x3 conv,
    which is the entrance conv: all-low gives the OS16 stride-2 network."""
    torch.manual_seed(0)
    c1 = nn.Conv2d(5, 6, 1)
    c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
    x = torch.randn(1, 5, 8, 12)
    cells = CellMask(torch.ones(1, 1, 4, 6), 'sparse')
    with torch.no_grad():
        out = run_layers(x, [c1, nn.ReLU(), c2], cells=cells).densify()
        os16 = nn.functional.conv2d(torch.relu(c1(x)), c2.weight, c2.bias,
                                    stride=2, padding=1)
    expected = os16.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='needs cells'):
        run_layers(x, [c1, c2])
    with pytest.raises(ValueError, match='needs a 3x3 conv'):
        run_layers(x, [c1], cells=cells)


def aspp_modules(c_in=6, c=4, rates=(1, 2, 4, 6), seed=0):
    """Plain-torch ASPP blocks (conv, BN, ReLU) as mmseg's ASPPHead has
    them: image pool (1x1 after the pooling), branches, bottleneck."""
    def block(k, rate=1, c_in=c_in):
        return nn.Sequential(
            nn.Conv2d(c_in, c, k, padding=0 if k == 1 else rate,
                      dilation=rate, bias=False), nn.BatchNorm2d(c),
            nn.ReLU())
    pool = block(1)
    branches = [block(1 if r == 1 else 3, r) for r in rates]
    bottleneck = block(3, c_in=c * (len(rates) + 1))
    for m in [pool, bottleneck] + branches:
        randomize_(m, seed).eval()
    return pool, branches, bottleneck


def dense_aspp(x, pool, branches, bottleneck, halve=False):
    """The dense ASPP (written out with F.conv2d); ``halve``: the OS16
    network's, rates halved."""
    def block(m, x):
        conv, bn, act = m
        k, d = conv.kernel_size[0], conv.dilation[0]
        d = d // 2 if halve and d > 1 else d
        return act(bn(nn.functional.conv2d(
            x, conv.weight, conv.bias, padding=0 if k == 1 else d,
            dilation=d)))
    image = pool(x.mean((2, 3), keepdim=True)).expand(-1, -1, *x.shape[2:])
    return block(bottleneck,
                 torch.cat([image] + [block(b, x) for b in branches], 1))


@pytest.mark.parametrize('execution', ['dense', 'sparse'])
def test_aspp_at_the_two_resolutions(execution):
    """All cells high: the dense ASPP; all low (``stride`` pooling): the
    OS16 ASPP with rates halved on the strided map, each value covering its
    cell (DESIGN §7)."""
    x = torch.randn(2, 6, 16, 24)
    mods = aspp_modules()
    with torch.no_grad():
        for low, expected in (
                (0., dense_aspp(x, *mods)),
                (1., dense_aspp(x[:, :, ::2, ::2], *mods, halve=True)
                 .repeat_interleave(2, 2).repeat_interleave(2, 3))):
            cells = CellMask(torch.full((2, 1, 8, 12), low), execution)
            got = run_aspp(MixedFeature.from_dense(x, cells), *mods)
            torch.testing.assert_close(got.densify(), expected, atol=1e-5,
                                       rtol=1e-5)


@pytest.mark.parametrize('density,pool', [(0.25, 'stride'), (0.5, 'stride'),
                                          (0.5, 'avg'), (0.5, 'max')])
def test_aspp_sparse_equals_dense_emulation(density, pool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 16, 24, generator=g)
    mask = ref.random_mask(2, 8, 12, density, g)
    mods = aspp_modules(seed=2)
    with torch.no_grad():
        dense, sparse = (run_aspp(MixedFeature.from_dense(
            x, CellMask(mask, ex), pool), *mods).densify()
            for ex in ('dense', 'sparse'))
    assert dense.shape == (2, 4, 16, 24)
    torch.testing.assert_close(sparse, dense, atol=1e-4, rtol=1e-4)


def test_aspp_errors_are_named():
    pool, branches, bottleneck = aspp_modules()
    with pytest.raises(ValueError, match='takes a MixedFeature'):
        run_aspp(torch.randn(1, 6, 8, 8), pool, branches, bottleneck)
    feat = MixedFeature.from_dense(torch.randn(1, 6, 8, 8),
                                   CellMask(torch.zeros(1, 1, 4, 4), 'dense'))
    with pytest.raises(ValueError, match='an image pool or a branch'):
        run_aspp(feat, None, [], bottleneck)
    adaptive = feat.new(feat.data, SelectivePooling('adaptive', channels=6))
    with pytest.raises(ValueError, match="parameter-free pooling"):
        run_aspp(adaptive, pool, branches, bottleneck)


@pytest.mark.parametrize('bad,match', [
    (nn.Conv2d(5, 5, 3, stride=2, padding=1), 'stride 1'),
    (nn.Conv2d(5, 5, 3, padding=1, groups=5), 'groups 1'),
    (nn.Conv2d(5, 5, 5, padding=2), '1x1 or 3x3'),
    (nn.Conv2d(5, 5, 3, padding=3, dilation=2), 'padding = dilation'),
    (ConvModule(5, 5, 1, norm_cfg=dict(type='GN', num_groups=1)),
     'BatchNorm norms'),
    (ConvModule(5, 5, 1, order=('norm', 'conv', 'act'),
                norm_cfg=dict(type='BN')), "order"),
])
def test_unsupported_layers_are_named(bad, match):
    with pytest.raises(NotImplementedError, match=match):
        flatten_layers([bad])


def test_dropout_in_training_needs_dense_emulation():
    x = torch.randn(1, 5, 8, 12)
    cells = CellMask(torch.zeros(1, 1, 4, 6), 'sparse')
    feat = MixedFeature.from_dense(x, cells)
    drop = nn.Dropout2d(0.5).train()
    with pytest.raises(RuntimeError, match='dense emulation only'):
        run_layers(feat, [drop])
    out = run_layers(feat, [drop.eval()])  # identity in eval
    assert torch.equal(out.densify(), x)


@pytest.mark.parametrize('density', [0.0, 0.25, 1.0])
@pytest.mark.parametrize('pool', ['stride', 'adaptive'])
def test_layers_macs_equal_the_executed_multiply_adds(density, pool,
                                                      monkeypatch):
    n, h, w = 1, 8, 12
    mask = ref.random_mask(n, h // 2, w // 2, density,
                           torch.Generator().manual_seed(1))
    mods = layers()
    feat = MixedFeature.from_dense(torch.randn(n, 5, h, w),
                                   CellMask(mask, 'sparse'), 'stride')
    # the two 3x3 convs read 5 and 6 channels
    pool_of = {mods[0].conv: SelectivePooling(pool, channels=5),
               mods[2][0]: SelectivePooling(pool, channels=6)}
    pooled = count_pooled_values(monkeypatch)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run_layers(feat, mods, pool_for=pool_of.get)
    low = float(mask.sum())
    counted = layers_macs(mods, 4 * (h * w // 4 - low), low,
                          pool_for=pool_of.get)
    # torch counts the convs; the pooled values are counted as they run
    assert counter.get_total_flops() // 2 == counted['full'] + counted['down']
    assert pooled.macs == counted['pooling']
    low_and_high = 0 < density < 1
    if pool == 'adaptive' and low_and_high:
        assert counted['pooling'] > 0
    else:
        assert counted['pooling'] == 0


def test_backbone_pooling_lookup_survives_copies():
    """One lookup of each 3x3 conv's pooling module, valid in copies."""
    bb = selds_backbone(pool='adaptive')
    convs = [m for m in bb.layer3.modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert bb.pooling_for(bb.layer3[0].conv2) is bb.pooling['layer3_0_conv2']
    twin = copy.deepcopy(bb)
    assert twin.pooling_for(twin.layer3[0].conv2) is \
        twin.pooling['layer3_0_conv2']
    assert len({id(bb.pooling_for(c)) for c in convs}) == len(convs)


def test_sparse_weights_are_kept_until_the_parameters_change():
    conv, bn = layers()[2][0], layers()[2][1]
    with torch.no_grad():
        w1, b1 = sparse_weights(conv, bn)
        assert sparse_weights(conv, bn)[0] is w1  # kept
        assert w1.is_contiguous(memory_format=torch.channels_last)
        bn.running_var.mul_(2)  # new statistics: folded again
        w2, b2 = sparse_weights(conv, bn)
        assert w2 is not w1 and not torch.equal(w2, w1)
        conv.load_state_dict({k: v + 1 for k, v in
                              conv.state_dict().items()})
        w3, _ = sparse_weights(conv, bn)
        assert not torch.equal(w3, w2)
        expected = fold_batch_norm(conv.weight, conv.bias, bn)
        torch.testing.assert_close(w3, expected[0])
    # with autograd recording (weights that train) nothing is kept
    clear_sparse_weights(conv)
    w4, _ = sparse_weights(conv, bn)
    assert w4.requires_grad and '_sparse_weights' not in conv.__dict__


def test_sparse_weights_read_parametrized_weights():
    """Parameters and buffers are read from the module's dicts (fast); a
    parametrized weight, which is not there, is computed as getattr
    computes it."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(5, 6, 3, padding=1), nn.BatchNorm2d(6).eval()
    randomize_(bn)
    plain = sparse_weights(conv, bn)
    parametrize.register_parametrization(conv, 'weight', Double())
    with torch.no_grad():
        doubled = sparse_weights(conv, bn)
    torch.testing.assert_close(doubled[0], 2 * plain[0])
    torch.testing.assert_close(doubled[1], plain[1])


def test_dense_layers_fold_and_equal_the_modules():
    """The dense part of sparse inference (stem, stages 1-2) with folded
    BatchNorm equals the modules, strided and grouped convs included."""
    torch.manual_seed(0)
    mods = nn.Sequential(nn.Conv2d(5, 8, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
                         nn.BatchNorm2d(8), nn.MaxPool2d(2), nn.Identity())
    randomize_(mods).eval()
    x = torch.randn(2, 5, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(dense_layers(x, mods), mods(x),
                                   atol=1e-5, rtol=1e-5)
    assert '_sparse_weights' in mods[0].__dict__  # kept for the next call


def test_folded_dense_stages_equal_the_backbone_modules():
    from mmselds.models.backbones.selds_resnet import dense_stages
    for depth in (18, 50):
        bb = randomize_(selds_backbone(depth)).eval()
        x = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            plain = dense_stages(bb, x)
            folded = dense_stages(bb, x, folded=True)
        for a, b in zip(plain, folded):  # float32 round-off of the folds
            torch.testing.assert_close(b, a, rtol=1e-4,
                                       atol=1e-4 * a.abs().max().item())


class HostReads(TorchFunctionMode):
    """Counts the calls whose result the host reads (on a GPU each waits
    for every queued kernel): ``.item()``, ``bool()``, ``nonzero`` ...,
    boolean-mask indexing."""
    NAMES = {'item', 'tolist', '__bool__', '__int__', '__float__',
             '__index__', 'nonzero', 'argwhere', 'unique',
             'unique_consecutive', 'masked_select', 'bincount',
             'repeat_interleave', 'numpy', 'cpu'}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name == '__getitem__':
            keys = args[1] if isinstance(args[1], tuple) else (args[1], )
            if any(isinstance(k, torch.Tensor) and k.dtype == torch.bool
                   for k in keys):
                self.calls.append('boolean index')
        elif name in self.NAMES:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def residual_blocks(depth, c=8):
    """``depth`` bottleneck-like blocks (1x1, 3x3 of dilation 2, 1x1),
    eval BatchNorm."""
    blocks = []
    for i in range(depth):
        blk = nn.Sequential(conv_module(c, 4, 1), conv_module(4, 4, 3, 2),
                            conv_module(4, c, 1, act=None))
        randomize_(blk, i)
        blocks.append(blk.eval())
    return blocks


def test_sparse_inference_reads_the_host_a_fixed_number_of_times():
    """GPU readiness, checked on the CPU: sparse inference reads results
    on the host (mask check, index tables) a fixed number of times a pass,
    not once a layer: 2 and 5 residual blocks (the stride entrance, a
    block after it, the shortcut epilogue and the densified output
    included; a table is built once per dilation) make the same reads.
    Counted on a second pass with a new mask: the first pass after
    ``eval()`` folds each conv's weights and checks them for NaN once (a
    read a conv, kept until the weights change)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 8, 12, generator=g)
    masks = [ref.random_mask(2, 4, 6, 0.5, g) for _ in range(2)]

    def reads(depth):
        blocks = residual_blocks(depth)
        calls = []
        for mask in masks:
            with torch.no_grad(), HostReads() as probe:
                cells = CellMask(mask, 'sparse')
                feat = x
                for blk in blocks:
                    feat = run_residual_block(feat, [blk], cells=cells)
                feat.densify()
            calls.append(sorted(probe.calls))
        return calls

    (fold2, two), (fold5, five) = reads(2), reads(5)
    assert two, 'the probe saw no host read (the mask check reads one)'
    assert five == two
    # the folding pass: one more read for each conv of the 3 more blocks
    convs = sum(isinstance(m, torch.nn.Conv2d) for blk in
                residual_blocks(3) for m in blk.modules())
    assert len(fold5) - len(fold2) == convs


def test_residual_block_on_a_dense_map_needs_cells():
    blk = residual_blocks(1)[0]
    with pytest.raises(ValueError, match='run_residual_block on a dense '
                       r'map \(the stage entrance\) needs cells'):
        run_residual_block(torch.randn(1, 8, 8, 12), [blk])
