"""tests/toolrun.py runs ``python <script>`` command lines in processes
forked from a server that has imported torch and mmseg: each must end,
print and see its surroundings as the same command line run by
``subprocess.run`` does, or the tool tests built on it would not test the
tools as users run them."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests import toolrun

SCRIPT = '''
import json, os, random, sys
import numpy as np
import torch
print('out line')
print('err line', file=sys.stderr)
print(json.dumps(dict(
    argv=sys.argv, cwd=os.getcwd(), path0=sys.path[0],
    env=os.environ.get('TOOLRUN_PROBE'), name=__name__, file=__file__,
    random=[random.random(), float(np.random.rand()),
            float(torch.rand(1))])))
how = sys.argv[1]
if how == 'raise':
    raise ValueError('boom')
if how == 'exit-text':
    sys.exit('error: named')
if how == 'exit-3':
    sys.exit(3)
if how == 'atexit':
    import atexit
    atexit.register(lambda: print('exit handler ran', flush=True))
if how == 'sleep':
    import time
    print('sleeping', flush=True)
    time.sleep(60)
'''


def without_draws(out):
    """``out`` with the probe's random draws left out."""
    if isinstance(out, bytes):
        return without_draws(out.decode()).encode()
    return re.sub(r'"random": \[[^]]*\]', '"random": []', out)


def both(script, *args, **kwargs):
    """The command line run forked and as a real process."""
    cmd = [sys.executable, str(script), *args]
    assert toolrun.forks(cmd)
    forked = toolrun.run(cmd, **kwargs)
    real = subprocess.run(cmd, **kwargs)
    return forked, real


@pytest.fixture
def script(tmp_path):
    path = tmp_path / 'tools' / 'probe.py'
    path.parent.mkdir()
    path.write_text(SCRIPT)
    (tmp_path / 'cwd').mkdir()
    return path


@pytest.mark.parametrize('how, status', [('ok', 0), ('raise', 1),
                                         ('exit-text', 1), ('exit-3', 3),
                                         ('atexit', 0)])
def test_a_forked_run_ends_and_prints_as_a_real_one(script, tmp_path, how,
                                                    status):
    env = dict(os.environ, TOOLRUN_PROBE='seen')
    forked, real = both(script.relative_to(tmp_path), how,
                        cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120)
    for proc in (forked, real):
        assert proc.returncode == status, proc.stderr
        out = proc.stdout.splitlines()
        assert out[0] == 'out line'
        assert proc.stderr.startswith('err line\n')
    # the same output (the traceback too), but for the random draws
    assert without_draws(forked.stdout) == without_draws(real.stdout)
    assert forked.stderr == real.stderr
    probe = json.loads(forked.stdout.splitlines()[1])
    assert probe['env'] == 'seen' and probe['name'] == '__main__'
    assert probe['path0'] == str(script.parent)
    assert probe['argv'] == ['tools/probe.py', how]
    assert probe['file'] == str(script)
    if how == 'raise':
        assert forked.stderr.splitlines()[1:3] == [
            'Traceback (most recent call last):',
            f'  File "{script}", line 14, in <module>']


def test_merged_output_and_bytes(script, tmp_path):
    forked, real = both(script, 'raise', cwd=tmp_path,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert forked.stderr is None and real.stderr is None
    assert isinstance(forked.stdout, bytes)
    assert without_draws(forked.stdout) == without_draws(real.stdout)
    assert forked.stdout.endswith(b'ValueError: boom\n')


def test_each_run_draws_new_random_numbers(script, tmp_path):
    """As separate interpreters do (a fork would copy the server's states:
    every run would draw the same numbers)."""
    draws = [json.loads(toolrun.run(
        [sys.executable, script, 'ok'], capture_output=True,
        text=True).stdout.splitlines()[1])['random'] for _ in range(3)]
    for source in range(3):  # random, numpy, torch
        assert len({d[source] for d in draws}) == 3, draws


def test_timeout_and_check(script, tmp_path):
    with pytest.raises(subprocess.TimeoutExpired) as err:
        toolrun.run([sys.executable, script, 'sleep'], capture_output=True,
                    text=True, timeout=3)
    assert 'sleeping' in err.value.stdout
    with pytest.raises(subprocess.CalledProcessError):
        toolrun.run([sys.executable, script, 'exit-3'], capture_output=True,
                    check=True)
    # the server goes on after a killed child
    assert toolrun.run([sys.executable, script, 'ok'],
                       capture_output=True).returncode == 0


def test_what_is_not_a_script_runs_as_a_real_process(monkeypatch):
    assert not toolrun.forks([sys.executable, '-c', 'pass'])
    assert not toolrun.forks(['bash', 'tools/dist_train.sh'])
    assert not toolrun.forks(['python3', 'tools/train.py'])
    proc = toolrun.run([sys.executable, '-c', 'import sys; sys.exit(4)'])
    assert proc.returncode == 4
    monkeypatch.setenv('MMSELDS_TESTS_SUBPROCESS', '1')
    assert not toolrun.forks([sys.executable, 'tools/train.py'])
