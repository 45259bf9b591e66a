"""tools/ end to end: 2-process CPU data-parallel training through
tools/dist_train.sh, resume from its checkpoint, then tools/test.py."""
import glob
import os
import os.path as osp
import sys

import pytest
import torch

from tests import toolrun
from tests.helpers import ROOT, SELDS_DEMO, cfg_options, free_port


def run(cmd, timeout=600, **env):
    proc = toolrun.run([str(c) for c in cmd], cwd=ROOT, timeout=timeout,
                       capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable, **env))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


@pytest.mark.slow
def test_dist_train_resume_and_test(demo_data, tmp_path):
    work = tmp_path / 'work'

    def train_opts(iters):
        return cfg_options(demo_data, **{
            'train_cfg.max_iters': iters, 'train_cfg.val_interval': 4,
            'default_hooks.checkpoint.interval': 2,
            'default_hooks.logger.interval': 1,
            'train_dataloader.batch_size': 2})

    out = run(['bash', 'tools/dist_train.sh', SELDS_DEMO, 2, '--work-dir',
               work, '--cfg-options', *train_opts(4)],
              PORT=str(free_port()))
    assert 'CPU data-parallel run: gloo backend, rank 0 of 2' in out
    assert 'Distributed training: True' in out
    assert 'ds_ratio' in out and 'mIoU' in out
    assert osp.exists(work / 'iter_4.pth')

    out = run(['bash', 'tools/dist_train.sh', SELDS_DEMO, 2, '--work-dir',
               work, '--resume', '--cfg-options', *train_opts(6)],
              PORT=str(free_port()))
    assert 'resumed epoch: 0, iter: 4' in out
    ckpt = torch.load(work / 'iter_6.pth', map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['iter'] == 6
    assert any(k.startswith('backbone.mask_head.')
               for k in ckpt['state_dict'])

    pred, show = tmp_path / 'pred', tmp_path / 'show'
    out = run([sys.executable, 'tools/test.py', SELDS_DEMO,
               work / 'iter_6.pth', '--work-dir', tmp_path / 'test',
               '--out', pred, '--show-dir', show, '--cfg-options',
               *cfg_options(demo_data)])
    assert 'mIoU' in out and 'ds_ratio' in out
    assert len(glob.glob(str(pred / '*.png'))) == 4
    assert len(glob.glob(str(show / '**' / '*.png'), recursive=True)) == 4


GLOO_TOOL = """
import atexit, sys, torch.distributed as dist
from mmselds.utils.checkpoint import InvalidCheckpointError
from mmselds.utils.launch import run_cli
dist.init_process_group('gloo', init_method='file://' + sys.argv[1],
                        rank=0, world_size=1)
atexit.register(lambda: print('exit handler ran, group',
                              dist.is_initialized(), flush=True))

def main():
    print('trained', flush=True)
    if sys.argv[2] == 'fail':
        raise InvalidCheckpointError('not a checkpoint: x.pth')

run_cli(main)
print('after run_cli: group', dist.is_initialized(), flush=True)
"""


@pytest.mark.parametrize('outcome', ['ok', 'fail'])
def test_run_cli_ends_gloo_run(tmp_path, outcome):
    """A Gloo tool run that ends normally destroys its process group, runs
    the exit handlers and ends there with status 0 (left to the
    interpreter's teardown, a rank of dist_train.sh aborted with SIGABRT
    after training had finished, 1 run in 10 to 20). After an error the
    group is left alone (other ranks may be inside a collective) and the
    error ends the tool with one line and status 1."""
    proc = toolrun.run(
        [sys.executable, '-c', GLOO_TOOL, str(tmp_path / 'store'), outcome],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    if outcome == 'ok':
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert lines == ['trained', 'exit handler ran, group False']
    else:
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1] == \
            'error: not a checkpoint: x.pth'
        assert lines == ['trained', 'exit handler ran, group True']
