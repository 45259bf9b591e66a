"""Third-party log lines that read like errors and are not: importing
mmselds drops mmcv-lite's MultiScaleDeformableAttention warning and the
onedl fork's "Could not import OneDL"; the benchmark's memory profile drops
the profiler's USDT lines. Only those: other output passes."""
import subprocess
import sys

from tests.helpers import ROOT, SELDS_DEMO

MMCV_LITE = 'MultiScaleDeformableAttention'
ONEDL = 'Could not import OneDL'


def python(code, *args, timeout=300):
    proc = subprocess.run([sys.executable, *args, '-c', code] if code else
                          [sys.executable, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, proc.stderr


def test_the_noise_exists_without_mmselds():
    """The control: the installed packages do print both messages (so the
    next test can fail)."""
    out, err = python('import mmcv.cnn.bricks.transformer, mmseg.datasets')
    assert MMCV_LITE in err and out.count(ONEDL) == 2


def test_import_mmselds_is_quiet_and_leaves_other_warnings_alone():
    code = '''
import warnings
import mmselds
import mmseg.models, mmseg.datasets, mmcv.cnn.bricks.transformer
for action, message, category, module, _ in warnings.filters:
    # no filter of ours stays behind (the torch/numpy ones do)
    assert message is None or 'MultiScale' not in message.pattern
    assert not (action == 'ignore' and message is None and module is None
                and issubclass(UserWarning, category)), 'blanket filter'
warnings.warn('Fail to import something else', UserWarning)
print('imported')
'''
    out, err = python(code)
    assert 'imported' in out
    assert MMCV_LITE not in out + err and ONEDL not in out + err
    assert 'UserWarning: Fail to import something else' in err


def test_benchmark_prints_no_profiler_noise(tmp_path):
    control = '''
import torch
from torch.profiler import ProfilerActivity, profile
with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
    torch.ones(8) * 2
'''
    assert 'USDT:' in python(control)[1]  # torch's profiler does print it
    out, err = python(None, 'tools/analysis_tools/benchmark.py', SELDS_DEMO,
                      '--shape', '64', '128', '--repeat', '1', '--ds-ratio',
                      '0')
    assert '| s=0 |' in out  # ran, peak memory measured
    for noise in ('USDT:', 'Memory block of unknown size', MMCV_LITE, ONEDL):
        assert noise not in out + err, noise


def test_native_stderr_filter_keeps_other_lines():
    code = '''
import os, sys
from mmselds.analysis.timing import drop_native_stderr_lines
with drop_native_stderr_lines('USDT:', 'unknown size'):
    os.write(2, b'USDT: x profiler_start\\nkeep me\\nblock of unknown size\\n')
    print('python stderr', file=sys.stderr)
os.write(2, b'after\\n')
'''
    _, err = python(code)
    assert err.splitlines()[-3:] == ['keep me', 'python stderr', 'after']


def test_no_tool_prints_the_noise_when_it_starts():
    """Each tool in a new interpreter (``--help``: its imports, then the
    usage). The other tests run tools forked from a process that imported
    the mm packages already (tests/toolrun.py), where the noise of an
    import could not show; here all start at once, 2 cores shared."""
    import glob
    import subprocess
    tools = sorted(glob.glob('tools/*.py', root_dir=ROOT)
                   + glob.glob('tools/*/*.py', root_dir=ROOT))
    assert len(tools) >= 15, tools
    procs = {tool: subprocess.Popen(
        [sys.executable, tool, '--help'], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for tool in tools}
    for tool, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0 and 'usage:' in out, (tool, out[-2000:])
        for noise in (MMCV_LITE, ONEDL, 'Traceback'):
            assert noise not in out, (tool, noise, out[-2000:])
