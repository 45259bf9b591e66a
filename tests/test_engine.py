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


def runner_for(model, path, resume=False, work_dir='.'):
    return SimpleNamespace(_load_from=None if path is None else str(path),
                           _resume=resume, _has_loaded=False, model=model,
                           work_dir=str(work_dir),
                           logger=logging.getLogger('test'))


def save(module, path):
    torch.save(dict(meta={}, state_dict={f'backbone.{k}': v for k, v in
                                         module.state_dict().items()}), path)


def load(hook, runner):
    """What Runner.load_or_resume does around the hook: before_run, read
    the file, after_load_checkpoint."""
    hook.before_run(runner)
    ckpt = torch.load(runner._load_from, map_location='cpu',
                      weights_only=False)
    hook.after_load_checkpoint(runner, ckpt)
    return ckpt


def test_check_load_from_accepts_an_mmseg_checkpoint(tmp_path, caplog):
    model = Holder(selds_backbone(18, pool='adaptive'))
    save(mmseg_resnet(model.backbone), tmp_path / 'mmseg.pth')
    hook = HOOKS.build(dict(type='CheckLoadFromHook'))
    with caplog.at_level(logging.INFO):
        ckpt = load(hook, runner_for(model, tmp_path / 'mmseg.pth'))
    # filled in with the model's own values: mmengine finds every key
    assert set(ckpt['state_dict']) == set(model.state_dict())
    for key, value in model.state_dict().items():
        if key.startswith('backbone.mask_head.'):
            assert ckpt['state_dict'][key] is not None
            assert torch.equal(ckpt['state_dict'][key], value) or \
                value.isnan().all()
    notice = [r.getMessage() for r in caplog.records
              if 'keep their initialisation' in r.getMessage()
              and r.levelno == logging.INFO]  # training from it: a notice
    assert len(notice) == 1, caplog.text
    assert 'backbone.mask_head.*' in notice[0]
    assert 'backbone.pooling.*' in notice[0]
    n = sum(k.startswith(('backbone.mask_head.', 'backbone.pooling.'))
            for k in model.state_dict())
    assert f': {n} tensors under' in notice[0]


def test_check_load_from_names_missing_and_mismatched_keys(tmp_path,
                                                           caplog):
    from mmseg.models.backbones import ResNetV1c
    other = ResNetV1c(depth=18, **OS8, **NARROW)  # another depth
    save(other, tmp_path / 'r18.pth')
    model = Holder(selds_backbone(50))
    ours = other.state_dict()['layer1.0.conv1.weight'].shape
    theirs = model.backbone.state_dict()['layer1.0.conv1.weight'].shape
    assert ours != theirs
    shapes = (rf'backbone.layer1.0.conv1.weight: checkpoint '
              rf'\({", ".join(map(str, ours))}\), model '
              rf'\({", ".join(map(str, theirs))}\)')
    hook = HOOKS.build(dict(type='CheckLoadFromHook', inference=True))
    with pytest.raises(ValueError, match=r'r18.pth does not fit the model: '
                       r'[1-9]\d* shape mismatches: ' + shapes +
                       r'.*[1-9]\d* missing keys .*layer1.0.conv3.weight'), \
            caplog.at_level(logging.INFO):
        load(hook, runner_for(model, tmp_path / 'r18.pth'))
    # the error alone: no warning about its mask head first (was: "keep
    # their random initialisation", then the mismatch)
    assert 'initialisation' not in caplog.text, caplog.text


def test_check_load_from_refuses_extra_blocks(tmp_path):
    """A deeper checkpoint whose common tensors all fit (R34 into R18):
    only its unexpected keys tell."""
    from mmseg.models.backbones import ResNetV1c
    save(ResNetV1c(depth=34, **OS8, **NARROW), tmp_path / 'r34.pth')
    hook = HOOKS.build(dict(type='CheckLoadFromHook'))
    with pytest.raises(ValueError, match=r'r34.pth does not fit the model: '
                       r'[1-9]\d* unexpected keys .*backbone.layer1.2.'):
        load(hook, runner_for(Holder(selds_backbone(18)),
                              tmp_path / 'r34.pth'))


def test_check_load_from_not_strict_warns(tmp_path, caplog):
    from mmseg.models.backbones import ResNetV1c
    save(ResNetV1c(depth=34, **OS8, **NARROW), tmp_path / 'r34.pth')
    hook = HOOKS.build(dict(type='CheckLoadFromHook', strict=False))
    with caplog.at_level(logging.WARNING):
        load(hook, runner_for(Holder(selds_backbone(18)),
                              tmp_path / 'r34.pth'))
    assert 'does not fit the model' in caplog.text
    assert 'not strict' in caplog.text


@pytest.mark.parametrize('content', [b'', b'\x9b' * 64])
def test_check_load_from_names_a_bad_file_before_loading(tmp_path, content):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(content)
    hook = HOOKS.build(dict(type='CheckLoadFromHook'))
    with pytest.raises(ValueError,
                       match=r'bad.pth is not a valid checkpoint'):
        hook.before_run(runner_for(Holder(selds_backbone(18)), bad))


def test_check_load_from_reads_the_checkpoint_resume_finds(tmp_path):
    (tmp_path / 'iter_4.pth').write_bytes(b'PK\x03\x04 truncated')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    hook = HOOKS.build(dict(type='CheckLoadFromHook'))
    with pytest.raises(ValueError, match=r'iter_4.pth is not a valid '):
        hook.before_run(runner_for(Holder(selds_backbone(18)), None,
                                   resume=True, work_dir=tmp_path))


def test_add_check_load_hook():
    from mmengine.config import Config

    from mmselds.engine.hooks import add_check_load_hook
    cfg = add_check_load_hook(Config(dict(custom_hooks=[
        dict(type='EMAHook')])), strict=False)
    assert cfg.custom_hooks == [dict(type='EMAHook'), dict(
        type='CheckLoadFromHook', strict=False, inference=False)]
    cfg = add_check_load_hook(Config(dict(custom_hooks=[
        dict(type='CheckLoadFromHook', strict=False, inference=True)])))
    assert cfg.custom_hooks == [dict(type='CheckLoadFromHook', strict=True,
                                     inference=False)]
    cfg = add_check_load_hook(Config(dict()), inference=True)  # tools/test
    assert cfg.custom_hooks == [dict(type='CheckLoadFromHook', strict=True,
                                     inference=True)]
    # tools/train.py adds ExactResumeHook the same way, once
    from mmselds.engine.hooks import add_hook
    cfg = add_hook(add_hook(Config(dict()), 'ExactResumeHook'),
                   'ExactResumeHook')
    assert cfg.custom_hooks == [dict(type='ExactResumeHook')]


def test_slurm_scripts_pass_the_job_layout(tmp_path):
    """A stand-in srun records its arguments (no cluster here)."""
    srun = tmp_path / 'srun'
    srun.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > '
                    '"$SRUN_LOG"\n')  # one argument a line
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}',
               SRUN_LOG=str(tmp_path / 'log'), GPUS='8', GPUS_PER_NODE='4',
               CPUS_PER_TASK='6', SRUN_ARGS='--quotatype=auto')
    # an argument with a space stays one argument (was split in two)
    extra = ['--work-dir', 'work dirs/run 1']
    for script, args in (('slurm_train.sh', ['cfg.py', '--amp', *extra]),
                         ('slurm_test.sh', ['cfg.py', 'ckpt.pth', '--tta',
                                            *extra])):
        subprocess.run(['bash', f'tools/{script}', 'part', 'job', *args],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        argv = (tmp_path / 'log').read_text().splitlines()
        for expected in ('-p', 'part', '--job-name=job', '--gres=gpu:4',
                         '--ntasks=8', '--ntasks-per-node=4',
                         '--cpus-per-task=6', '--quotatype=auto',
                         '--launcher=slurm', *args):
            assert expected in argv, (script, argv)
        assert argv[-4:] == ['--launcher=slurm', *args[-3:]], argv
        assert any(a.endswith('tools/' + script[6:-3] + '.py')
                   for a in argv), argv


@pytest.mark.parametrize('argv', [['dist_train.sh', 'cfg.py'],
                                  ['dist_train.sh', 'cfg.py', 'two'],
                                  ['dist_test.sh', 'cfg.py', 'ckpt.pth', '0']])
def test_dist_scripts_name_a_missing_process_count(argv):
    """Was torchrun's ``ValueError: Unsupported nproc_per_node value``."""
    proc = subprocess.run(['bash', f'tools/{argv[0]}', *argv[1:]], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f'usage: bash tools/{argv[0]} CONFIG ')
    assert 'GPUS is the number of processes on this node: a positive ' \
        'integer, or auto, cpu, gpu' in proc.stderr, proc.stderr


def test_resolve_resume_tells_an_initialisation_from_a_training_state(
        tmp_path):
    """--resume with load_from (tools/train.py): a training state of this
    model is resumed from (mmseg's way to pick the checkpoint); a
    checkpoint without optimizer or message hub, without the mask head, or
    at the end of this run's schedule is the run's initialisation: the
    work dir's latest checkpoint is resumed instead, or, with none, the
    run starts from load_from."""
    from mmselds.engine.hooks import resolve_resume
    model = Holder(selds_backbone(18, pool='adaptive'))
    state = {f'{k}': v for k, v in model.state_dict().items()}
    training = dict(optimizer={}, message_hub={})

    def ckpt(name, iter_=2, **parts):
        path = tmp_path / name
        torch.save(dict(meta=dict(iter=iter_), **parts), path)
        return path

    own = ckpt('own.pth', state_dict=state, **training)
    published = ckpt('published.pth', state_dict=state)
    ended = ckpt('ended.pth', iter_=20000, state_dict=state, **training)
    mmseg = tmp_path / 'mmseg.pth'
    save(mmseg_resnet(model.backbone), mmseg)
    work = tmp_path / 'work'
    work.mkdir()

    def resolve(path, resume=True):
        runner = runner_for(model, path, resume=resume, work_dir=work)
        runner.cfg = dict(train_cfg=dict(max_iters=20000))
        return resolve_resume(runner), runner

    # no --resume, or no load_from: mmengine's own choice, untouched
    assert resolve(mmseg, resume=False)[0] == str(mmseg)
    assert resolve(None)[0] is None  # no checkpoint in the work dir yet
    assert resolve(own)[0] == str(own)  # resumed from, as in mmseg
    for init in (published, ended, mmseg):  # empty work dir: a new run
        path, runner = resolve(init)
        assert path == str(init) and runner._resume is False, init
    latest = work / 'iter_8.pth'
    latest.write_bytes(b'x')
    (work / 'last_checkpoint').write_text(str(latest))
    assert resolve(own)[0] == str(own)
    for init in (published, ended, mmseg):  # the work dir's latest
        path, runner = resolve(init)
        assert path == str(latest) and runner._load_from == str(latest)
        assert runner._resume is True
