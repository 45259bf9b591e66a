"""tools/ablation.py (the letter's Table 1 on one command) end to end at a
tiny size, its bad inputs, and the library helpers it reports with."""
import importlib.util
import json
import math
import os
import os.path as osp
import sys

import cv2
import pytest
import torch
from mmengine.config import Config

from mmselds.analysis.ablation import (LETTER_TABLE1, aggregate_runs,
                                       beyond_spread, compare_rows,
                                       format_spread, letter_row,
                                       model_components, spread)
from mmselds.analysis.plots import plot_ablation
from mmselds.analysis.ratio_rule import (fixed_ratio_rule, largest_tie,
                                         top_k_mask)
from mmselds.analysis.report import ablation_curve_lines, ablation_table
from mmselds.models import DepthwiseMaskHead
from mmselds.utils.model_io import build_segmentor
from tests.helpers import DEMO, ROOT
from tests.test_tools import run

ROWS = {
    'Baseline (CAD)': 'deeplabv3-selds-cad_r18-d8_1xb8-200it-ft_synthcity-'
                      '128x256.py',
    'Prop. 1': 'deeplabv3-selds-prop1_r18-d8_1xb8-200it-ft_synthcity-'
               '128x256.py',
    'Prop. 2': 'deeplabv3-selds-prop2_r18-d8_1xb8-200it-ft_synthcity-'
               '128x256.py',
}
# what each row of the letter is made of
COMPONENTS = {
    'Baseline (CAD)': ('CADMaskHead', 'stride', 'target'),
    'Prop. 1': ('DepthwiseMaskHead', 'stride', 'target'),
    'Prop. 2': ('DepthwiseMaskHead', 'adaptive', 'target-free'),
}
HEADER = ('| row | mask head | pooling | sparsity loss | mIoU | mIoU at ')


def ablation_tool():
    spec = importlib.util.spec_from_file_location(
        'ablation', osp.join(ROOT, 'tools', 'ablation.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------ end to end
@pytest.mark.slow
def test_ablation_runs_end_to_end(tmp_path):
    work, data = tmp_path / 'work', tmp_path / 'data'
    out = run([sys.executable, 'tools/ablation.py', '--work-dir', work,
               '--data-root', data, '--num-train', 6, '--num-val', 2,
               '--iters', 2, '--dense-iters', 2, '--batch-size', 2,
               '--num-workers', 0, '--seeds', 0, 1, '--ratios', 0, 1,
               '--jobs', 2])
    # the table in the letter's form: a header, a separator, three rows
    lines = out[out.index(HEADER):].splitlines()
    assert 'mask head + pooling MMACs 128x256' in lines[0]
    assert 'mask head + pooling MMACs 1024x2048' in lines[0]
    assert 'backbone GMACs' in lines[0] and 'ds ratio' in lines[0]
    assert lines[1].count('|---') == lines[0].count('|') - 1
    assert [line.split(' | ')[0] for line in lines[2:5]] == [
        f'| {name}' for name in ROWS]
    for line in lines[2:5]:
        assert line.count('|') == lines[0].count('|')
        assert ' ± ' in line  # two seeds: the spread is shown
    assert 'within the seed spread' in out or 'larger than the seed' in out
    assert 'threshold sweeps' in out and 'total time' in out

    results = json.load(open(work / 'results.json'))
    assert list(results['rows']) == list(ROWS)
    assert results['seeds'] == [0, 1] and results['ratios'] == [0, 1]
    os8 = results['dense']['OS8']
    assert os8['backbone_gmacs'] > results['dense']['OS16']['backbone_gmacs']
    for name, row in results['rows'].items():
        head, pooling, loss = COMPONENTS[name]
        comp = row['components']
        assert (comp['mask_head'], comp['pooling'], comp['loss']) == \
            COMPONENTS[name]
        assert row['letter']['row'] == name
        assert row['mIoU']['n'] == 2 and len(row['curve']) == 2
        assert row['mask_head_macs_ref'] > row['mask_head_macs'] > 0
        assert (row['pooling_macs'] > 0) == (pooling == 'adaptive')
        for i, run_ in enumerate(results['runs'][name]):
            seed = run_['seed']
            assert seed == [0, 1][i]
            # read back what the run trained: its dumped config and its
            # checkpoint's tensors
            cfg = Config.fromfile(osp.join(run_['work_dir'], ROWS[name]))
            assert cfg.model.backbone.mask_head.type == head
            assert cfg.model.backbone.pooling.mode == pooling
            assert cfg.model.sparsity_loss.mode == loss
            assert cfg.load_from == os8['checkpoint']
            assert cfg.randomness.seed == seed
            assert cfg.train_cfg.max_iters == 2
            state = torch.load(run_['checkpoint'], map_location='cpu',
                               weights_only=False)['state_dict']
            first = state['backbone.mask_head.convs.0.0.weight']
            # CAD: a full 3x3 conv; depthwise: one 3x3 filter per channel
            assert first.shape[1] == (32 if head == 'CADMaskHead' else 1)
            assert any(k.startswith('backbone.pooling.') for k in state) == \
                (pooling == 'adaptive')
            if loss == 'target':
                # the target is the ratio the target-free row trained to
                free = results['runs']['Prop. 2'][i]['trained_ratio']
                assert cfg.model.sparsity_loss.target == round(free, 4)
                assert run_['target'] == round(free, 4)
            # every row swept at the same ratios, Prop. 2's own included,
            # each point measured at its ratio (2 images of 8x16 cells)
            assert [p['ratio'] for p in run_['sweep']] == [0, 1]
            for p in run_['sweep'] + [run_['matched']]:
                assert abs(p['ds_ratio'] - p['ratio']) <= 0.01 + 1 / 128
                assert p['rule'] in ('threshold', 'top-k per image')
            assert run_['matched']['ratio'] == pytest.approx(
                results['matched']['per_seed'][str(seed)])
    figure = cv2.imread(str(work / 'ablation.png'))
    assert figure is not None and figure.shape[0] > 300
    assert osp.exists(work / 'results.md')


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize('argv, message', [
    (['--seeds', '0', '0'], '--seeds has duplicates'),
    (['no_such_config.py'], 'config no_such_config.py not found'),
    (['--iters', '1'], '--iters must be at least 2'),
    (['--ratios', '0.5', '1.5'], '--ratios must be in [0, 1]'),
    (['--num-workers', '-1'], '--num-workers must be >= 0'),
    (['--jobs', '0'], '--jobs must be at least 1'),
    ([osp.join(DEMO, ROWS['Prop. 2'])] * 2, 'a config is listed twice'),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        ablation_tool().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('root, warned', [('cityscapes', True),
                                          ('synthetic_cityscapes', False)])
def test_generating_into_a_new_folder_says_what_it_holds(
        tmp_path, monkeypatch, capsys, root, warned):
    """A --data-root that does not exist gets the synthetic data set,
    as documented; unless its name says synthetic, a warning says that
    it now holds generated scenes (a mistyped real-Cityscapes path)."""
    module = ablation_tool()
    written = []

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(module, 'generate_with_progress',
                        lambda root, *a, **k: written.append(root))
    monkeypatch.setattr(module, 'run_parallel', stop)  # after the data
    with pytest.raises(Stop):
        module.main(['--work-dir', str(tmp_path / 'w'), '--data-root',
                     str(tmp_path / root), '--num-train', '2',
                     '--num-val', '1'])
    out = capsys.readouterr().out
    assert written == [str(tmp_path / root)]
    assert 'data: generating the synthetic data set (2 + 1 images of ' \
        '128x256)' in out
    assert ('holds generated street scenes; for real Cityscapes give the '
            'folder that holds leftImg8bit/ and gtFine/' in out) == warned


def test_a_dense_config_is_not_a_row(tmp_path):
    dense = osp.join(DEMO, 'deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py')
    tool = ablation_tool()
    args = tool.parse_args([dense, '--work-dir', str(tmp_path / 'w')])
    with pytest.raises(SystemExit, match='not a selective down-sampling '
                       'config.*no mask head'):
        tool.inspect_rows(args)


def test_a_finished_run_of_the_same_settings_is_reused(
        tmp_path, monkeypatch, capsys):
    """mmselds.utils.launch.train_or_reuse, as the ablation and the demo
    train: a finished run is reused only for the same config path, the
    same resolved content and the same options."""
    from mmselds.utils import launch
    config, work = tmp_path / 'p2.py', tmp_path / 'run'
    config.write_text(f"_base_ = ['{osp.join(DEMO, ROWS['Prop. 2'])}']\n")
    options = ['randomness.seed=0']
    started = []

    def stream_training(name, cmd):  # records a run instead of starting it
        started.append(cmd)
        work.mkdir(exist_ok=True)
        (work / 'iter_2.pth').write_bytes(b'x')
        (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))

    monkeypatch.setattr(launch, 'stream_training', stream_training)

    def train(cfg=config, opts=options, retrain=False):
        return launch.train_or_reuse('P2', str(cfg), str(work), opts,
                                     retrain)

    assert train() == str(work / 'iter_2.pth')
    assert len(started) == 1 and 'randomness.seed=0' in started[0]
    # the same config and options: reused
    train()
    assert len(started) == 1 and 'P2: using' in capsys.readouterr().out
    # other options, another config, the same file with other content, or
    # retrain: trained again
    train(opts=['randomness.seed=1'])
    train(cfg=osp.join(DEMO, ROWS['Prop. 1']), opts=['randomness.seed=1'])
    assert len(started) == 3
    train(cfg=osp.join(DEMO, ROWS['Prop. 1']), opts=['randomness.seed=1'])
    assert len(started) == 3
    train(opts=['randomness.seed=1'])
    assert len(started) == 4
    config.write_text(config.read_text() + 'iters = 7\n')
    train(opts=['randomness.seed=1'])
    assert len(started) == 5
    train(opts=['randomness.seed=1'], retrain=True)
    assert len(started) == 6
    # the same data root regenerated with other images: trained again
    from mmselds.datasets import generate
    data = str(tmp_path / 'data')
    generate(data, 1, 1, (64, 128))
    with_data = ['randomness.seed=1',
                 f'train_dataloader.dataset.data_root={data}']
    train(opts=with_data)
    train(opts=with_data)
    assert len(started) == 7
    generate(data, 2, 1, (64, 128))
    train(opts=with_data)
    assert len(started) == 8


@pytest.mark.parametrize('jobs', [1, 3])
def test_run_parallel_keeps_the_order_and_shares_the_cores(jobs,
                                                           monkeypatch):
    tool = ablation_tool()
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    with tool.threads_per_job(jobs):
        threads = os.environ.get('OMP_NUM_THREADS')
        out = tool.run_parallel(jobs, [(k, lambda k=k: k * 2)
                                       for k in (3, 1, 2)])
    assert list(out.items()) == [(3, 6), (1, 2), (2, 4)]
    assert (threads is None) == (jobs == 1)
    assert 'OMP_NUM_THREADS' not in os.environ


# --------------------------------------------------------- the helpers
@pytest.mark.parametrize('name', list(ROWS))
def test_demo_row_configs_build_the_letters_rows(name):
    model, _ = build_segmentor(osp.join(DEMO, ROWS[name]))
    comp = model_components(model)
    assert (comp['mask_head'], comp['pooling'], comp['loss']) == \
        COMPONENTS[name]
    assert letter_row(comp)['row'] == name
    # same widths as the demo's depthwise head, on the 32-channel map
    assert comp['mask_head_desc'].startswith(f'{COMPONENTS[name][0]}(32; '
                                             '32, 16;')


def test_model_components_refuses_a_dense_model():
    model, _ = build_segmentor(
        osp.join(DEMO, 'deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py'))
    with pytest.raises(ValueError, match='no mask head'):
        model_components(model)


def test_letter_table_rows():
    assert [r['row'] for r in LETTER_TABLE1] == list(COMPONENTS)
    assert letter_row(dict(mask_head='CADMaskHead', pooling='adaptive',
                           loss='target')) is None


def test_spread_and_beyond_spread():
    s = spread([1.0, 3.0])
    assert (s['mean'], s['half_range'], s['n']) == (2.0, 1.0, 2)
    assert s['std'] == pytest.approx(math.sqrt(2))
    assert format_spread(s) == '2.00 ± 1.00'
    one = spread([5.0])
    assert one['std'] == 0 and format_spread(one, 1) == '5.0'
    nan = spread([float('nan'), 4.0, 6.0])
    assert (nan['mean'], nan['n'], nan['nan']) == (5.0, 2, 1)
    assert format_spread(spread([float('nan')])) == 'nan'
    # [1, 3] and [3.5, 4.5] do not overlap; [1, 3] and [2.5, 3.5] do
    assert beyond_spread(s, spread([3.5, 4.5]))
    assert not beyond_spread(s, spread([2.5, 3.5]))
    # one seed: no spread, never called a difference
    assert not beyond_spread(one, spread([0.0]))


def fake_run(seed, miou, ratio=0.85, macs=1e6):
    return dict(seed=seed, mIoU=miou, ds_ratio=ratio, trained_ratio=ratio,
                backbone_gmacs=0.2, mask_head_macs=macs, pooling_macs=0,
                mask_head_macs_ref=64 * macs, pooling_macs_ref=0,
                matched=dict(mIoU=miou - 1, ds_ratio=ratio),
                sweep=[dict(ratio=r, mIoU=miou + 2 * (1 - r), ds_ratio=r,
                            backbone_gmacs=0.4 - 0.25 * r)
                       for r in (0.0, 0.5, 1.0)])


def fake_rows(seeds=(0, 1)):
    rows = {}
    for name, (miou, macs) in zip(COMPONENTS, ((38.0, 7e6), (36.0, 1e6),
                                               (38.2, 1.2e6))):
        head, pooling, loss = COMPONENTS[name]
        comp = dict(mask_head=head, mask_head_desc=f'{head}(32; 32, 16)',
                    pooling=pooling, loss=loss,
                    loss_target=0.85 if loss == 'target' else None,
                    loss_weight=1.0, tau=1.0)
        rows[name] = dict(aggregate_runs([fake_run(seed, miou + 0.4 * seed,
                                                   macs=macs)
                                          for seed in seeds]),
                          components=comp, letter=letter_row(comp),
                          target=spread([0.85] * len(seeds)))
    return rows


def test_one_seed_is_not_judged_against_a_spread():
    """With one seed there is no spread: the verdict and the curve lines
    say so instead of calling every difference "within the seed spread"
    (was: both, next to the line saying no difference can be called
    real)."""
    rows = fake_rows(seeds=(0,))
    curve = ablation_curve_lines(rows).splitlines()
    assert len(curve) == 3
    assert all(line.endswith('[one seed: no spread to judge by]')
               for line in curve), curve
    runs = {name: [dict(seed=0, sweep=[dict(rule='threshold')],
                        matched=dict(rule='threshold'))] for name in rows}
    dense = {k: dict(mIoU=40.0, backbone_gmacs=0.4) for k in ('OS8', 'OS16')}
    text = ablation_tool().verdict(rows, runs, dense, [0],
                                   dict(label='s = 0.850'))
    assert 'one seed: no spread, so no difference can be called real.' \
        in text
    assert 'seed spread' not in text, text
    assert 'mIoU, own test-time rule: Prop. 1 - Baseline (CAD) = -2.00 ' \
        '(36.00 vs 38.00).' in text, text
    runs = {name: [dict(seed=seed, sweep=[dict(rule='threshold')],
                        matched=dict(rule='threshold')) for seed in (0, 1)]
            for name in rows}
    two = ablation_tool().verdict(fake_rows(), runs, dense, [0, 1],
                                  dict(label='s = 0.850'))
    assert 'Prop. 1 - Baseline (CAD) = -2.00 (36.20 ± 0.20 vs 38.20 ± '\
        '0.20): larger than the seed spread.' in two, two


def test_aggregate_runs_and_compare_rows():
    rows = fake_rows()
    cad = rows['Baseline (CAD)']
    assert cad['mIoU']['mean'] == pytest.approx(38.2)
    assert cad['mIoU']['half_range'] == pytest.approx(0.2)
    assert cad['seeds'] == [0, 1]
    assert [p['ratio'] for p in cad['curve']] == [0.0, 0.5, 1.0]
    assert cad['curve'][2]['mIoU']['mean'] == pytest.approx(38.2)
    pairs = compare_rows(rows, 'mIoU')
    assert [(p['first'], p['second']) for p in pairs] == [
        ('Baseline (CAD)', 'Prop. 1'), ('Baseline (CAD)', 'Prop. 2'),
        ('Prop. 1', 'Prop. 2')]
    assert [p['beyond_spread'] for p in pairs] == [True, False, True]
    assert pairs[0]['difference'] == pytest.approx(-2.0)
    with pytest.raises(ValueError, match='different ratios'):
        other = fake_run(1, 30.0)
        other['sweep'] = other['sweep'][:2]
        aggregate_runs([fake_run(0, 30.0), other])
    with pytest.raises(ValueError, match='no runs'):
        aggregate_runs([])


def test_ablation_table_and_curve_lines():
    rows = fake_rows()
    lines = ablation_table(rows, (128, 256), matched_label='s = 0.850'
                           ).splitlines()
    assert lines[0].startswith(HEADER + 's = 0.850 | ds ratio |')
    assert len(lines) == 2 + len(rows)
    cad, prop1 = lines[2].split(' | '), lines[3].split(' | ')
    assert cad[0] == '| Baseline (CAD)' and prop1[0] == '| Prop. 1'
    assert 'target, t = 0.85 (w 1)' in cad
    assert '38.20 ± 0.20' in cad and '0.850 ± 0.000' in cad
    assert '7.000' in cad and '448.0' in cad and '-' in cad
    assert '-85.7%' in prop1  # 1e6 vs 7e6 multiply-adds
    assert lines[2].endswith('| 2 | 0.77, 690M |')
    curve = ablation_curve_lines(rows).splitlines()
    assert len(curve) == 3 and curve[0].startswith('  s=0.00: ')
    assert 'beyond the spread: Baseline (CAD) vs Prop. 1' in curve[0]


def test_plot_ablation_writes_a_png(tmp_path):
    """The figure, its legend's mIoU to two decimals (was: one, so 1.39
    and 1.42 both read '1.4 mIoU')."""
    path = tmp_path / 'ablation.png'
    labels = plot_ablation(
        fake_rows(), dict(OS8=dict(backbone_gmacs=0.39, mIoU=1.42),
                          OS16=dict(backbone_gmacs=0.14, mIoU=1.39)),
        str(path))
    assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] > image.shape[0] > 300
    assert 'dense OS8 (1.42 mIoU)' in labels and \
        'dense OS16 (1.39 mIoU)' in labels, labels
    assert f'{next(iter(fake_rows()))}: own rule (38.20 mIoU)' in labels, \
        labels


def test_top_k_mask_reaches_the_ratio_through_ties():
    prob = torch.full((2, 1, 4, 4), 0.5)
    prob[1, 0, 3, 3] = 0.9
    mask = top_k_mask(prob, 0.25)
    assert mask.shape == prob.shape
    assert mask.flatten(1).sum(1).tolist() == [4, 4]
    # ties in raster order; a higher P first
    assert mask[0, 0, 0].tolist() == [1, 1, 1, 1]
    assert mask[1, 0, 3, 3] == 1 and mask[1, 0, 0].tolist() == [1, 1, 1, 0]
    assert top_k_mask(prob, 0).sum() == 0 and top_k_mask(prob, 1).all()
    with pytest.raises(ValueError, match='ratio'):
        top_k_mask(prob, 1.5)
    with pytest.raises(ValueError, match='shape'):
        top_k_mask(prob[:, 0], 0.5)


def test_fixed_ratio_rule_overrides_the_head_within_the_block():
    head = DepthwiseMaskHead(in_channels=8, channels=(8, 8)).eval()
    head.init_weights()
    head.threshold = 0.99  # even an explicit threshold is overridden
    feat = torch.randn(2, 8, 8, 16)
    with fixed_ratio_rule(head, 0.75):
        mask = head.sample(head(feat))
    assert mask.flatten(1).mean(1).tolist() == [0.75, 0.75]
    assert 'decide' not in vars(head)  # the head's own rule is back
    assert head.sample(head(feat)).mean() < 0.75
    with pytest.raises(ValueError, match='ratio'):
        with fixed_ratio_rule(head, -0.1):
            pass


def test_largest_tie():
    value, fraction = largest_tie(torch.tensor([0.2, 0.7, 0.7, 0.7, 0.1]))
    assert value == pytest.approx(0.7) and fraction == pytest.approx(0.6)
    with pytest.raises(ValueError):
        largest_tie(torch.tensor([]))
