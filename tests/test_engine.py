import logging
import os
import stat
import subprocess
from types import SimpleNamespace

import pytest
import torch
from mmseg.registry import HOOKS

import mmselds  # noqa: F401
from tests.helpers import ROOT
from tests.test_models.utils import NARROW, OS8, mmseg_resnet, selds_backbone


class Holder(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def runner_for(model, path):
    return SimpleNamespace(_load_from=str(path), _resume=False, model=model,
                           logger=logging.getLogger('test'))


def save(module, path):
    torch.save(dict(meta={}, state_dict={f'backbone.{k}': v for k, v in
                                         module.state_dict().items()}), path)


def test_check_load_from_accepts_an_mmseg_checkpoint(tmp_path):
    model = Holder(selds_backbone(18))
    save(mmseg_resnet(model.backbone), tmp_path / 'mmseg.pth')
    hook = HOOKS.build(dict(type='CheckLoadFromHook'))
    hook.before_train(runner_for(model, tmp_path / 'mmseg.pth'))


def test_check_load_from_names_missing_and_mismatched_keys(tmp_path):
    from mmseg.models.backbones import ResNetV1c
    other = ResNetV1c(depth=18, **OS8, **NARROW)  # another depth
    save(other, tmp_path / 'r18.pth')
    hook = HOOKS.build(dict(type='CheckLoadFromHook'))
    with pytest.raises(ValueError, match=r'does not fit the model: [1-9]\d* '
                       r'missing keys.*layer1.0.conv3.weight.*[1-9]\d* shape '
                       'mismatches'):
        hook.before_train(runner_for(Holder(selds_backbone(50)),
                                     tmp_path / 'r18.pth'))


def test_slurm_scripts_pass_the_job_layout(tmp_path):
    """A stand-in srun records its arguments (no cluster here)."""
    srun = tmp_path / 'srun'
    srun.write_text('#!/usr/bin/env bash\necho "$@" > "$SRUN_LOG"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}',
               SRUN_LOG=str(tmp_path / 'log'), GPUS='8', GPUS_PER_NODE='4',
               CPUS_PER_TASK='6', SRUN_ARGS='--quotatype=auto')
    for script, args in (('slurm_train.sh', ['cfg.py', '--amp']),
                         ('slurm_test.sh', ['cfg.py', 'ckpt.pth', '--tta'])):
        subprocess.run(['bash', f'tools/{script}', 'part', 'job', *args],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        line = (tmp_path / 'log').read_text()
        for expected in ('-p part', '--job-name=job', '--gres=gpu:4',
                         '--ntasks=8', '--ntasks-per-node=4',
                         '--cpus-per-task=6', '--quotatype=auto',
                         '--launcher=slurm', args[-1]):
            assert expected in line, (script, line)
        assert 'tools/' + script[6:-3] + '.py' in line
