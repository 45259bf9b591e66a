"""``import mmselds`` and ``mmselds.analysis`` need torch only, yet
``import mmselds`` still registers mmselds into mmseg's registries (as soon
as mmseg is imported) and resolves ``mmseg::`` config bases; the op
benchmark runs without mm* packages, from any folder."""
import importlib
import subprocess
import sys
import types

import pytest

import mmselds.analysis
from mmselds.utils.post_import import when_imported
from tests.helpers import ROOT
from tests.snippets import BLOCK_MM, MM_LOADED

MM = ('mmseg', 'mmcv', 'mmengine')


def python(code: str, cwd: str = ROOT, *args) -> str:
    proc = subprocess.run([sys.executable, *args, '-c', code], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize('statement', [
    'import mmselds',
    'import mmselds.analysis',
    'import mmselds.analysis.timing',
    'from mmselds.analysis.timing import median, time_call, time_interleaved',
    'from mmselds.analysis import plot_cost_accuracy, results_table',
])
def test_analysis_imports_no_mm_package(statement):
    """mm* packages installed (this environment), none imported."""
    assert python(f'import sys\n{statement}\n{MM_LOADED}').strip() == 'ok'


def test_analysis_imports_and_times_without_mm_packages():
    """mm* packages missing: the torch-only parts work, the rest says what
    is missing when used."""
    code = BLOCK_MM + '''
import mmselds.analysis as analysis
from mmselds.analysis import time_call, time_interleaved, median
times = time_interleaved({'a': lambda: None}, repeat=3)
assert median(times['a']) >= 0 and time_call(lambda: None) >= 0
try:
    analysis.backbone_macs
except ModuleNotFoundError as error:
    assert error.name in ('mmseg', 'mmcv', 'mmengine'), error
else:
    raise AssertionError('backbone_macs imported without mmseg')
''' + MM_LOADED
    assert python(code).strip() == 'ok'


@pytest.mark.parametrize('name', mmselds.analysis.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(mmselds.analysis, name) is not None
    assert name in dir(mmselds.analysis)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match='no_such_name'):
        mmselds.analysis.no_such_name
    with pytest.raises(AttributeError, match='no_such_name'):
        importlib.import_module('mmselds').no_such_name


@pytest.mark.parametrize('first', [
    'import mmselds',
    'import mmseg.registry; import mmselds',  # mmseg already imported
    'import mmselds.models',  # the registration starts inside it
    'import mmengine; import mmselds',
])
def test_import_mmselds_registers_into_mmseg(first):
    code = first + '''
from mmengine.config import Config
cfg = Config.fromfile('configs/selds/deeplabv3-selds-prop2_r50-d8_'
                      '4xb2-80k_cityscapes-512x1024.py')  # mmseg:: bases
assert cfg.model.backbone.type == 'SelDSResNetV1c'
from mmseg.registry import HOOKS, METRICS, MODELS
for registry, names in ((MODELS, ('SelDSResNetV1c', 'SelDSEncoderDecoder',
                                  'DepthwiseMaskHead', 'CADMaskHead',
                                  'SparsityLoss', 'SelDSASPPHead')),
                        (METRICS, ('DownsampleRatioMetric', )),
                        (HOOKS, ('CheckLoadFromHook', 'ExactResumeHook'))):
    for name in names:
        assert registry.get(name) is not None, name
import mmselds
assert mmselds.models.SelDSResNetV1c is MODELS.get('SelDSResNetV1c')
print('ok')
'''
    assert python(code).strip() == 'ok'


def test_when_imported_runs_after_the_first_import(tmp_path, monkeypatch):
    name = 'mmselds_test_post_import_module'
    (tmp_path / f'{name}.py').write_text('VALUE = 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    when_imported(name, lambda module: seen.append(module.VALUE))
    assert seen == []
    module = importlib.import_module(name)
    try:
        assert seen == [1]
        assert module.__spec__.loader.__class__.__name__ != '_Loader'
        importlib.reload(module)
        assert seen == [1]  # once
        when_imported(name, lambda module: seen.append('now'))
        assert seen == [1, 'now']  # already imported: at once
    finally:
        sys.modules.pop(name, None)


def test_when_imported_keeps_waiting_after_a_failed_import(
        tmp_path, monkeypatch):
    """A failed first import keeps the callback for the next one."""
    name = 'mmselds_test_post_import_broken'
    path = tmp_path / f'{name}.py'
    path.write_text('raise RuntimeError("broken")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    when_imported(name, seen.append)
    with pytest.raises(RuntimeError, match='broken'):
        importlib.import_module(name)
    assert seen == [] and name not in sys.modules
    path.write_text('VALUE = 2\n')
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(name)
        assert seen == [module] and isinstance(module, types.ModuleType)
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize('where', ['root', 'elsewhere'])
def test_benchmark_ops_runs_without_mm_packages(where, tmp_path):
    script = f'{ROOT}/tools/analysis_tools/benchmark_ops.py'
    cwd = ROOT if where == 'root' else str(tmp_path)
    out = subprocess.run([sys.executable, script, '--help'], cwd=cwd,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and '--densities' in out.stdout, out.stderr
    code = BLOCK_MM + f'''
import runpy
sys.argv = [{script!r}, '--channels', '4', '--shape', '8', '16',
            '--repeat', '5', '--warmup', '1', '--densities', '1', '0.5']
runpy.run_path(sys.argv[0], run_name='__main__')
''' + MM_LOADED
    out = python(code, cwd)
    assert 'dense F.conv2d' in out and out.rstrip().endswith('ok')
    rows = [line.split()[0] for line in out.splitlines()
            if line.lstrip().startswith(('1.00', '0.50', '1-1', '0+1'))]
    assert rows == ['1.00', '0.50', '1-1cell', '0+1cell']
