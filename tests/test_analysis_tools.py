"""The analysis tools end to end on the demo's small configs: get_flops
(forced ratios and the model's own masks on generated images),
mask_head_flops (Table 1) and benchmark (--compare, JSON, plot)."""
import json
import re
import sys

import cv2
import pytest

from tests import toolrun
from tests.helpers import DEMO, ROOT, SELDS_DEMO
from tests.test_checkpoint_tools import tool
from tests.test_tools import run

OS8_DEMO = f'{DEMO}/deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py'


def test_get_flops_forced_ratios_and_own_masks(demo_data, tmp_path):
    out_json = tmp_path / 'flops.json'
    out = run([sys.executable, 'tools/analysis_tools/get_flops.py',
               SELDS_DEMO, '--shape', 128, 256, '--ds-ratio', 0, 0.5, 1,
               '--data-root', demo_data, '--num-images', 2, '--out',
               out_json])
    assert 'multiply-adds (GMACs)' in out and 'OS16' in out
    counts = json.load(open(out_json))
    columns = counts['columns']
    own = [c for c in columns if c.startswith('own mask')]
    assert len(own) == 1 and '2 images' in own[0]
    s0, s5, s1 = columns['s=0'], columns['s=0.5'], columns['s=1']
    for col in columns.values():
        assert col['total'] == col['backbone'] + col['decode_head']
        assert col['backbone'] == pytest.approx(
            col['stem_stages12'] + col['stages34_full'] +
            col['stages34_down'] + col['mask_head'] + col['pooling'])
    # I4: full-resolution work linear in (1 - s), down-sampled work in s
    assert s0['stages34_down'] == 0 and s1['stages34_full'] == 0
    assert s5['stages34_full'] == pytest.approx(s0['stages34_full'] / 2)
    assert s5['stages34_down'] == pytest.approx(s1['stages34_down'] / 2)
    refs = counts['references']
    # all full resolution = OS8 + mask head (nothing pooled); all low =
    # OS16's convs + mask head + the adaptive pooling of the stage-2 map at
    # the stage entrance (the only full-resolution values then read)
    assert s0['pooling'] == 0
    assert s0['backbone'] - s0['mask_head'] == refs['OS8']['backbone']
    assert s1['pooling'] > 0
    assert s1['backbone'] - s1['mask_head'] - s1['pooling'] == \
        refs['OS16']['backbone']


def test_get_flops_dense_config(tmp_path):
    out_json = tmp_path / 'flops.json'
    run([sys.executable, 'tools/analysis_tools/get_flops.py', OS8_DEMO,
         '--shape', 128, 256, '--out', out_json])
    counts = json.load(open(out_json))
    assert list(counts['columns']) == ['dense']
    dense = counts['columns']['dense']
    assert dense['backbone'] == counts['references']['OS8']['backbone']
    assert dense['total'] == counts['references']['OS8']['total']


def run_in(cwd, cmd):
    proc = toolrun.run([str(c) for c in cmd], cwd=cwd, timeout=300,
                       capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def macs_of(out, row):
    """The MACs (in M) printed on the row starting with ``row``."""
    found = re.search(re.escape(row) + r'.*?\s([\d.]+)M', out)
    assert found, out
    return float(found.group(1))


def test_mask_head_flops_reports_the_reduction(tmp_path):
    # the default config is found from any working directory
    out = run_in(tmp_path, [sys.executable, f'{ROOT}/tools/analysis_tools/'
                            'mask_head_flops.py', '--shape', 256, 512])
    light = re.search(r'Prop\. 1: DepthwiseMaskHead\(512; 128, 64; '
                      r'BatchNorm2d\)\s+[\d.]+M\s+(-[\d.]+)%', out)
    assert light and float(light.group(1)) <= -80
    assert out.count("Prop. 2: this config's head + adaptive pooling") == 3
    # the letter's 1024x2048 numbers, scaled to 256x512 and marked so
    assert 'letter*' in out and 'x0.0625 = 256x512 / 1024x2048' in out
    assert re.search(r'Baseline \(CAD\).*M\s+43\.1M', out), out


def test_mask_head_flops_counts_the_configured_head():
    """--config counts the head the config builds (the demo's
    DepthwiseMaskHead with widths 32, 16), not one of default widths."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from mmselds.models import mask_head_macs
    out = run([sys.executable, 'tools/analysis_tools/mask_head_flops.py',
               '--shape', 128, 256, '--config', SELDS_DEMO])
    cfg = Config.fromfile(SELDS_DEMO)
    cfg.model.backbone.pop('init_cfg', None)
    head = MODELS.build(cfg.model.backbone).mask_head
    expected = mask_head_macs(head, 16, 32) / 1e6
    assert 'this config: DepthwiseMaskHead(32; 32, 16; BatchNorm2d)' in out
    assert macs_of(out, 'this config:') == pytest.approx(expected, abs=0.01)
    assert macs_of(out, 'Prop. 1:') > 5 * expected
    pooled = macs_of(out, "Prop. 2: this config's head + adaptive pooling "
                     '(s = 0.5)')
    assert expected < pooled < 2 * expected
    assert 'letter column is not directly comparable' in out


def test_mask_head_flops_names_a_dense_config():
    proc = toolrun.run([sys.executable, 'tools/analysis_tools/'
                        'mask_head_flops.py', '--config', OS8_DEMO],
                       cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(
        'has no selective down-sampling backbone (no mask head to count)')
    assert 'Traceback' not in proc.stderr


def test_benchmark_compare_writes_ratios_and_plot(tmp_path):
    # into folders that do not exist yet (created before the timing)
    out_json, png = tmp_path / 'json' / 'bench.json', tmp_path / 'bench.png'
    out = run([sys.executable, 'tools/analysis_tools/benchmark.py',
               SELDS_DEMO, '--shape', 64, 128, '--repeat', 1, '--compare',
               '--ds-ratio', 0, 1, '--out', out_json, '--plot', png])
    assert 'timed round 1/1 done' in out
    rows = {r['case']: r for r in json.load(open(out_json))['rows']}
    assert set(rows) == {'OS8', 'OS16', 'OS8 opt', 'OS16 opt', 's=0', 's=1'}
    # ratios to the optimised dense OS8, and to the plain one
    assert rows['OS8 opt']['backbone_time_ratio'] == 1
    assert rows['OS8']['backbone_time_ratio_plain'] == 1
    assert rows['OS8 opt']['model_flops_ratio'] == 1
    assert rows['s=1']['backbone_flops_ratio'] < \
        rows['s=0']['backbone_flops_ratio']
    for r in rows.values():
        assert r['backbone_ms'] > 0 and r['model_peak_mib'] > 0
    figure = cv2.imread(str(png))
    assert figure is not None and figure.shape[0] > 200


def test_benchmark_at_a_size_that_is_not_a_multiple_of_16():
    """60x44 gives an 8x6 OS8 map (4x3 cells): the forced masks have the
    backbone's cell grid (was: 60 // 16 x 44 // 16 = 3x2 cells, and a
    ds_mask shape error after the model was built)."""
    out = run([sys.executable, 'tools/analysis_tools/benchmark.py',
               SELDS_DEMO, '--shape', 60, 44, '--repeat', 1, '--ds-ratio',
               0.5, '--no-memory'])
    assert re.search(r'\| s=0.5 \| [\d.]+ \| [\d.]+ \|', out), out[-2000:]


def test_benchmark_names_a_dense_config(monkeypatch):
    """Was: ``ResNet.forward() got an unexpected keyword argument
    'ds_mask'`` deep in the timing."""
    module = tool('tools/analysis_tools/benchmark.py')
    with pytest.raises(SystemExit) as info:
        module.main([OS8_DEMO, '--shape', '64', '128', '--repeat', '1'])
    assert str(info.value) == (
        f'error: {OS8_DEMO} has no selective down-sampling backbone: '
        'nothing to time against the dense models (for a dense model\'s '
        'cost: tools/analysis_tools/get_flops.py)')


def test_benchmark_cudnn_autotuner_follows_the_config(monkeypatch):
    """On CUDA the model-level benchmark runs cuDNN's autotuner as the
    config's env_cfg sets it (as tools/test.py does), unless
    --no-cudnn-benchmark; on the CPU it leaves torch's setting alone."""
    import argparse

    import torch
    from mmengine.config import Config
    sys.path.insert(0, f'{ROOT}/tools/analysis_tools')
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    on = Config(dict(env_cfg=dict(cudnn_benchmark=True)))

    def args(device, off=False):
        return argparse.Namespace(device=device, no_cudnn_benchmark=off)
    assert benchmark.cudnn_autotuner(args('cpu'), on) is None
    assert torch.backends.cudnn.benchmark is False
    assert benchmark.cudnn_autotuner(args('cuda:0'), on) is True
    assert torch.backends.cudnn.benchmark is True
    assert benchmark.cudnn_autotuner(args('cuda'), on) is True
    assert benchmark.cudnn_autotuner(args('cuda', off=True), on) is False
    assert torch.backends.cudnn.benchmark is False
    assert benchmark.cudnn_autotuner(args('cuda'), Config(dict())) is False
    # the Cityscapes configs inherit mmseg's default_runtime (on); the
    # CPU demo configs turn it off
    cfg = Config.fromfile(f'{ROOT}/configs/selds/deeplabv3-selds-cad_r101-'
                          'd8_4xb2-80k_cityscapes-512x1024.py')
    assert benchmark.cudnn_autotuner(args('cuda'), cfg) is True
    cfg = Config.fromfile(SELDS_DEMO)
    assert benchmark.cudnn_autotuner(args('cuda'), cfg) is False


def test_get_flops_own_masks_use_the_images_size(demo_data, tmp_path):
    """Without --shape, the references are the dense networks at the
    images' own size (128x256 here), not at 1024x2048."""
    out_json = tmp_path / 'flops.json'
    out = run([sys.executable, 'tools/analysis_tools/get_flops.py',
               SELDS_DEMO, '--data-root', demo_data, '--num-images', 2,
               '--out', out_json])
    counts = json.load(open(out_json))
    assert counts['shape'] == [128, 256]
    assert counts['image_sizes'] == [[128, 256]]
    refs = counts['references']
    assert counts['image_references'] == refs
    (name, own), = counts['columns'].items()
    assert name.startswith('own mask')
    # between OS16 and OS8 at the same size (DESIGN I4)
    convs = own['backbone'] - own['mask_head'] - own['pooling']
    assert refs['OS16']['backbone'] <= convs <= refs['OS8']['backbone']
    printed = float(re.search(r'backbone / dense OS8 backbone\s+([\d.]+)',
                              out).group(1))
    assert printed == pytest.approx(
        own['backbone'] / refs['OS8']['backbone'], abs=1e-3)
    assert printed > 0.3
    assert 'at 128x256 (mmseg ResNetV1c)' in out


# ------------------------------------------------- impossible arguments

BAD_ARGUMENTS = [
    # (tool, arguments, the error argparse prints)
    ('get_flops.py', [SELDS_DEMO, '--shape', '128', '256', '--ds-ratio',
                      '1.5', '-0.5'],
     'argument --ds-ratio: must be a down-sampling ratio in [0, 1], got '
     '1.5'),
    ('get_flops.py', [SELDS_DEMO, '--shape', '128', '256', '--ds-ratio',
                      '0.5', 'nan'],
     'argument --ds-ratio: must be a down-sampling ratio in [0, 1], got '
     'nan'),
    ('get_flops.py', [SELDS_DEMO, '--shape', '0', '256'],
     'argument --shape: must be >= 1, got 0'),
    ('get_flops.py', [SELDS_DEMO, '--shape', '100', '200'],
     'argument --shape: an input of 100x200 gives an OS8 map of 13x25; '
     'selective down-sampling needs it even (2x2 cells)'),
    ('mask_head_flops.py', ['--shape', '100', '200'],
     'argument --shape: an input of 100x200 gives an OS8 map of 13x25'),
    ('benchmark_ops.py', ['--batch-size', '0'],
     'argument --batch-size: must be >= 1, got 0'),
    ('mask_head_flops.py', ['--ds-ratio', '1.5', '-1'],
     'argument --ds-ratio: must be a down-sampling ratio in [0, 1], got '
     '1.5'),
    ('mask_head_flops.py', ['--ds-ratio', '0.5', '-1'],
     'argument --ds-ratio: must be a down-sampling ratio in [0, 1], got -1'),
    ('benchmark_ops.py', ['--densities', '1.5'],
     'argument --densities: must be a density (fraction of full-resolution '
     'cells) in [0, 1], got 1.5'),
    ('benchmark_ops.py', ['--channels', '4', '--shape', '7', '16'],
     'argument --shape: the map height and width must be even (2x2 cells), '
     'got 7x16'),
    ('benchmark_ops.py', ['--dilation', '3'],
     'argument --dilation: must be 1 or even (the OS16 conv runs dilation '
     'r/2), got 3'),
    # benchmark.py: before, tracebacks after building the model (a
    # ZeroDivisionError for --repeat 0), or --threads 0 ignored
    ('benchmark.py', [SELDS_DEMO, '--repeat', '0'],
     'argument --repeat: must be >= 1, got 0'),
    ('benchmark.py', [SELDS_DEMO, '--batch-size', '0'],
     'argument --batch-size: must be >= 1, got 0'),
    ('benchmark.py', [SELDS_DEMO, '--threads', '0'],
     'argument --threads: must be >= 1, got 0'),
    ('benchmark.py', [SELDS_DEMO, '--ds-ratio', '0.5', '2'],
     'argument --ds-ratio: must be a down-sampling ratio in [0, 1], got 2'),
    ('benchmark.py', [SELDS_DEMO, '--shape', '100', '256'],
     'argument --shape: an input of 100x256 gives an OS8 map of 13x32'),
    ('benchmark.py', [SELDS_DEMO, '--plot', 'ratios.png'],
     '--plot needs --compare'),
    ('benchmark.py', [SELDS_DEMO, '--out', ROOT],
     f'argument --out: {ROOT} is a folder, not a file'),
    ('get_flops.py', [SELDS_DEMO, '--out', ROOT],
     f'argument --out: {ROOT} is a folder, not a file'),
    ('get_flops.py', [SELDS_DEMO, '--out', 'not_there_yet/'],
     'argument --out: not_there_yet/ is a folder, not a file'),
    ('get_flops.py', [SELDS_DEMO, '--out', ''],
     'argument --out: an empty path'),
    ('get_flops.py', [SELDS_DEMO, '--out', f'{ROOT}/README.md/x.json'],
     f'argument --out: cannot write {ROOT}/README.md/x.json: '
     f'{ROOT}/README.md is not a writable folder'),
]


@pytest.mark.parametrize('script, argv, message', BAD_ARGUMENTS)
def test_analysis_tools_reject_impossible_arguments(
        script, argv, message, monkeypatch, capsys):
    """Before: negative multiply-adds (get_flops --ds-ratio 1.5 -0.5),
    counts for an input the model refuses (--shape 100 200), rows for
    impossible ratios (mask_head_flops), an error naming 1 - density
    (benchmark_ops --densities 1.5)."""
    module = tool(f'tools/analysis_tools/{script}')
    monkeypatch.setattr(sys, 'argv', [script, *argv])
    with pytest.raises(SystemExit) as info:
        module.main()
    assert info.value.code == 2  # argparse's usage error
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f'{script}: error: {message}'), err


@pytest.mark.parametrize('resnet', ['ResNetV1c', 'ResNetV1d'])
def test_check_input_size_is_the_backbones_geometry(resnet):
    """``check_input_size`` (the backbone's forward, get_flops --shape,
    mask_head_flops --shape) returns the OS8 map the stem and stages 1-2
    produce and refuses exactly the sizes whose map is odd (not "a
    multiple of 16": 60x44 gives an 8x6 map and runs)."""
    import torch
    from mmseg.models import backbones

    from mmselds.models.backbones import check_input_size
    from mmselds.models.backbones.selds_resnet import dense_stages
    ref = getattr(backbones, resnet)(  # V1d: average-pool shortcuts
        depth=18, base_channels=4, stem_channels=4, strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4))
    ref.eval()  # (mmseg's ResNet.train returns None)
    for size in ((104, 208), (100, 200), (112, 224), (60, 44), (17, 31),
                 (65, 64), (1, 9)):
        with torch.no_grad():
            h, w = dense_stages(ref, torch.zeros((1, 3) + size))[-1].shape[2:]
        if h % 2 or w % 2:
            with pytest.raises(ValueError, match=f'OS8 map of {h}x{w}'):
                check_input_size(size)
        else:
            assert check_input_size(size) == (h, w), size


def test_get_flops_bad_shape_exits_2_without_a_traceback():
    proc = toolrun.run([sys.executable, 'tools/analysis_tools/'
                        'get_flops.py', SELDS_DEMO, '--shape', '100',
                        '200'], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'get_flops.py: error: argument --shape: an input of 100x200')
    assert 'GMACs' not in proc.stdout
