"""Checkpoints: reading and strict checking (mmselds.utils.checkpoint),
tools/test.py on bad or unfitting checkpoints and with --tta,
tools/misc/publish_model.py, tools/model_converters/mmseg2selds.py."""
import hashlib
import importlib.util
import logging
import math
import os
import os.path as osp
import re
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmselds.utils.checkpoint import (check_checkpoint, compare_state_dicts,
                                      read_checkpoint, state_dict_of)
from mmselds.utils.model_io import build_segmentor
from tests import toolrun
from tests.helpers import DEMO, ROOT, SELDS_DEMO, cfg_options
from tests.test_models.utils import NARROW, OS8, randomize_

DENSE_DEMO = osp.join(DEMO, 'deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py')


def tool(path):
    """A tools/ script as a module (its main(argv) runs in-process)."""
    name = osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cmd, timeout=600):
    proc = toolrun.run([str(c) for c in cmd], cwd=ROOT, timeout=timeout,
                       capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


# ---------------------------------------------------------------- reading

def valid_bytes(tmp_path, legacy=False):
    path = tmp_path / 'valid.pth'
    torch.save(dict(meta={}, state_dict={'a.weight': torch.ones(4, 3)}),
               path, _use_new_zipfile_serialization=not legacy)
    return path.read_bytes()


@pytest.mark.parametrize('legacy', [False, True])
def test_read_checkpoint_reads_both_formats(tmp_path, legacy):
    path = tmp_path / 'ok.pth'
    path.write_bytes(valid_bytes(tmp_path, legacy))
    ckpt = read_checkpoint(str(path))
    assert torch.equal(state_dict_of(ckpt)['a.weight'], torch.ones(4, 3))


@pytest.mark.parametrize('kind', ['missing', 'empty', 'truncated',
                                  'truncated-legacy', 'garbage', 'list'])
def test_read_checkpoint_names_an_invalid_file(tmp_path, kind):
    path = tmp_path / f'{kind}.pth'
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind.startswith('truncated'):
        data = valid_bytes(tmp_path, legacy=kind.endswith('legacy'))
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'garbage':
        path.write_bytes(b'\x9b' + os.urandom(300))
    elif kind == 'list':
        torch.save([torch.ones(2)], path)
    with pytest.raises(ValueError) as info:
        read_checkpoint(str(path))
    message = str(info.value)
    assert message.startswith(f'{path} is not a valid checkpoint'), message
    assert '\n' not in message
    if kind in ('truncated', 'truncated-legacy', 'garbage'):
        assert info.value.__cause__ is not None  # the original error


def test_compare_state_dicts_by_name():
    model = {'backbone.conv.weight': torch.zeros(8, 3, 3, 3),
             'backbone.bn.bias': torch.zeros(8),
             'backbone.mask_head.conv.weight': torch.zeros(1, 8, 1, 1),
             'decode_head.conv_seg.weight': torch.zeros(19, 8, 1, 1)}
    ckpt = {'module.backbone.conv.weight': torch.zeros(16, 3, 3, 3),
            'module.backbone.bn.bias': torch.zeros(8),
            'module.auxiliary_head.conv_seg.weight': torch.zeros(19, 4)}
    diff = compare_state_dicts(ckpt, model)
    assert diff.mismatched == [('backbone.conv.weight', (16, 3, 3, 3),
                                (8, 3, 3, 3))]
    assert diff.allowed_missing == ['backbone.mask_head.conv.weight']
    assert diff.missing == ['decode_head.conv_seg.weight']
    assert diff.unexpected == ['auxiliary_head.conv_seg.weight']
    assert not diff.ok
    assert ('backbone.conv.weight: checkpoint (16, 3, 3, 3), model '
            '(8, 3, 3, 3)') in diff.describe()
    assert compare_state_dicts(
        {k: v for k, v in model.items() if 'mask_head' not in k}, model).ok


# ------------------------------------------------------ tools/test.py

@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A selective R18 checkpoint of the demo config (random weights), and
    an R50 one of the same config, saved as mmengine does."""
    root = tmp_path_factory.mktemp('ckpts')
    paths = {}
    for name, opts in (('r18', None), ('r50', {'model.backbone.depth': 50})):
        model, cfg = build_segmentor(SELDS_DEMO, cfg_options=opts)
        paths[name] = root / f'{name}.pth'
        torch.save(dict(meta=dict(cfg=cfg.pretty_text, iter=1),
                        state_dict=model.state_dict()), paths[name])
    return paths


ORDER = 'arguments in the wrong order? The tools take CONFIG CHECKPOINT, ' \
    'then the rest'


@pytest.mark.parametrize('kind, name, hint', [
    ('png', 'a PNG image', ORDER), ('jpg', 'a JPEG image', ORDER),
    ('text', 'a text file', ORDER),
    # a character of two bytes cut by the 512 bytes read: still text
    ('long-text', 'a text file', ORDER),
    ('lfs', 'a Git LFS pointer', 'the checkpoint itself was not '
     'downloaded: run `git lfs pull`, or download the file'),
    ('html', 'an HTML page', 'a download that returned a web page instead '
     'of the file: download it again')])
def test_read_checkpoint_names_what_was_given_instead(tmp_path, kind, name,
                                                      hint):
    """An image or a config where the checkpoint belongs (arguments in
    the wrong order), a Git LFS pointer or a web page is named as what it
    is (was: the first line of torch's unpickling error, cut off at a
    comma)."""
    path = tmp_path / f'x.{kind}'
    if kind == 'text':
        path.write_text("_base_ = ['./base.py']\nmodel = dict()\n")
    elif kind == 'long-text':
        path.write_text('# ' + 'x' * 509 + 'é is two bytes\n',
                        encoding='utf-8')
        assert path.read_bytes()[511:513] == 'é'.encode()
    elif kind == 'lfs':
        path.write_text('version https://git-lfs.github.com/spec/v1\n'
                        'oid sha256:' + '0' * 64 + '\nsize 123\n')
    elif kind == 'html':
        path.write_text('<!DOCTYPE html>\n<html><body>Sign in</body></html>')
    else:
        cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError) as info:
        read_checkpoint(str(path))
    assert str(info.value) == f'{path} is not a checkpoint but {name} ' \
        f'({hint})'


def test_tools_test_names_a_corrupt_checkpoint(tmp_path, tiny_data):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'\x9b' * 100)
    rc, out = run([sys.executable, 'tools/test.py', SELDS_DEMO, bad,
                   '--work-dir', tmp_path / 'w', '--cfg-options',
                   *cfg_options(tiny_data)])
    assert rc != 0
    assert f'error: {bad} is not a valid checkpoint' in out, out[-3000:]
    assert 'Traceback' not in out
    assert 'Iter(test)' not in out


def test_tools_test_refuses_a_checkpoint_of_another_depth(
        tmp_path, tiny_data, checkpoints):
    rc, out = run([sys.executable, 'tools/test.py', SELDS_DEMO,
                   checkpoints['r50'], '--work-dir', tmp_path / 'w',
                   '--cfg-options', *cfg_options(tiny_data)])
    assert rc != 0
    assert 'Traceback' not in out and 'Iter(test)' not in out
    r50 = torch.load(checkpoints['r50'], weights_only=False)['state_dict']
    r18 = torch.load(checkpoints['r18'], weights_only=False)['state_dict']
    first = next(k for k in r18 if r18[k].shape != r50[k].shape)
    expected = (f'{checkpoints["r50"]} does not fit the model: '
                r'\d+ shape mismatches: ' + re.escape(
                    f'{first}: checkpoint ({", ".join(map(str, r50[first].shape))}), '  # noqa: E501
                    f'model ({", ".join(map(str, r18[first].shape))})'))
    assert re.search(expected, out), out[-3000:]
    assert '--no-strict-load' in out

    # the user's opt-out: loads what fits, warns, tests
    rc, out = run([sys.executable, 'tools/test.py', SELDS_DEMO,
                   checkpoints['r50'], '--no-strict-load', '--work-dir',
                   tmp_path / 'w', '--cfg-options', *cfg_options(tiny_data)])
    assert rc == 0, out[-3000:]
    assert 'does not fit the model' in out and 'not strict' in out
    assert re.search(r'mIoU: [\d.]+', out)


def test_testing_without_a_trained_mask_head_warns(tmp_path, tiny_data,
                                                   checkpoints):
    """A checkpoint without the mask head (an mmseg or dense one) given to
    tools/test.py or an analysis tool: a warning that the mask head is
    random (was an INFO line ending "expected for an mmseg checkpoint",
    and plausible ratios and mIoU); training from it stays a notice."""
    state = torch.load(checkpoints['r18'], weights_only=False)['state_dict']
    dense = tmp_path / 'dense.pth'
    torch.save(dict(meta={}, state_dict={
        k: v for k, v in state.items()
        if not k.startswith(('backbone.mask_head.', 'backbone.pooling.'))}),
        dense)
    warning = 'reflect a random mask head, not the method'
    for ckpt, warned in ((dense, True), (checkpoints['r18'], False)):
        rc, out = run([sys.executable, 'tools/test.py', SELDS_DEMO, ckpt,
                       '--work-dir', tmp_path / 'w', '--cfg-options',
                       *cfg_options(tiny_data)])
        assert rc == 0 and re.search(r'mIoU: [\d.]+', out), out[-3000:]
        assert (warning in out) == warned, out[-3000:]
        if warned:
            line = next(x for x in out.splitlines() if warning in x)
            assert 'WARNING' in line and 'backbone.mask_head.*' in line
    rc, out = run([sys.executable, 'tools/analysis_tools/get_flops.py',
                   SELDS_DEMO, '--checkpoint', dense, '--shape', 64, 128])
    assert rc == 0 and warning in out, out[-3000:]
    rc, out = run([sys.executable, 'tools/analysis_tools/get_flops.py',
                   SELDS_DEMO, '--data-root', tiny_data, '--num-images', 1])
    assert rc == 0, out[-3000:]
    assert 'no --checkpoint: the mask head keeps its random ' \
           'initialisation, so the masks' in out and warning in out


def test_tools_test_tta(tmp_path, tiny_data, checkpoints):
    rc, out = run([sys.executable, 'tools/test.py', SELDS_DEMO,
                   checkpoints['r18'], '--tta', '--work-dir', tmp_path / 'w',
                   '--cfg-options', *cfg_options(tiny_data)])
    assert rc == 0, out[-3000:]
    metrics = re.search(r'Iter\(test\) \[4/4\].*mIoU: ([\d.]+).*'
                        r'ds_ratio: ([\d.]+)', out)
    assert metrics, out[-3000:]
    assert 0 <= float(metrics.group(2)) <= 1


# Cityscapes label IDs of the 19 training classes (cityscapesscripts)
LABEL_IDS = {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
             31, 32, 33}


def test_cityscapes_test_server_recipe(tmp_path, tiny_data, checkpoints):
    """configs/selds/README.md's test-server config, run on a test split
    of images only: one PNG of Cityscapes label IDs per image, at the
    image's size, named as the server expects."""
    import shutil

    from PIL import Image
    readme = open(osp.join(ROOT, 'configs', 'selds', 'README.md')).read()
    section = readme[readme.index('## Cityscapes test server'):]
    config = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    base = re.search(r"_base_ = '\./([^']+)'", config).group(1)
    assert osp.isfile(osp.join(ROOT, 'configs', 'selds', base))
    # the same config on the demo model, at its size
    config = config.replace(f"'./{base}'", repr(SELDS_DEMO)).replace(
        'scale=(2048, 1024)', 'scale=(128, 64)').replace(
        "'work_dirs/format_results'", repr(str(tmp_path / 'results')))
    (tmp_path / 'test_server.py').write_text(config)
    root = tmp_path / 'data'
    shutil.copytree(osp.join(tiny_data, 'leftImg8bit', 'val'),
                    root / 'leftImg8bit' / 'test')
    images = sorted((root / 'leftImg8bit' / 'test').rglob('*.png'))
    assert images and not (root / 'gtFine').exists()
    rc, out = run([sys.executable, 'tools/test.py', tmp_path /
                   'test_server.py', checkpoints['r18'], '--work-dir',
                   tmp_path / 'w', '--cfg-options',
                   f'test_dataloader.dataset.data_root={root}',
                   'test_dataloader.num_workers=0',
                   'test_dataloader.persistent_workers=False'])
    assert rc == 0, out[-3000:]
    written = sorted((tmp_path / 'results').iterdir())
    assert [p.name for p in written] == sorted(p.name for p in images)
    for image, pred in zip(sorted(images, key=lambda p: p.name), written):
        ids = np.array(Image.open(pred))  # a palette image: its indices
        assert ids.ndim == 2 and ids.shape == cv2.imread(str(image)).shape[:2]
        assert set(np.unique(ids)) <= LABEL_IDS, np.unique(ids)


def test_tools_test_tta_without_a_tta_pipeline(tmp_path, tiny_data,
                                               checkpoints):
    rc, out = run([sys.executable, 'tools/test.py', SELDS_DEMO,
                   checkpoints['r18'], '--tta', '--work-dir', tmp_path / 'w',
                   '--cfg-options', *cfg_options(tiny_data),
                   'tta_pipeline=None'])
    assert rc != 0
    assert 'error: --tta needs tta_pipeline in' in out, out[-3000:]
    assert 'Traceback' not in out


def test_tta_model_keeps_the_mean_ratio_and_mask_of_the_passes():
    """mmseg's merge keeps the last pass's metainfo and fields; the merged
    prediction has the mean ratio and the mean mask of all passes."""
    from mmseg.registry import MODELS
    model, _ = build_segmentor(SELDS_DEMO)
    tta = MODELS.build(dict(type='SelDSTTAModel', module=model))
    torch.manual_seed(0)
    passes, ratios = [], [0.2, 0.4, 0.9, 0.5]
    for ratio in ratios:
        sample = SegDataSample(metainfo=dict(img_path='a.png',
                                             ds_ratio=ratio))
        sample.seg_logits = PixelData(data=torch.randn(19, 8, 16))
        sample.ds_mask = PixelData(
            data=(torch.rand(1, 8, 16) < ratio).float())
        passes.append(sample)
    masks = torch.stack([p.ds_mask.data for p in passes])
    merged = tta.merge_preds([passes])
    assert len(merged) == 1
    assert merged[0].ds_ratio == pytest.approx(np.mean(ratios))
    torch.testing.assert_close(merged[0].ds_mask.data, masks.mean(0))
    assert 0 < float(merged[0].ds_mask.data.mean()) < 1
    probs = sum(p.seg_logits.data.softmax(0) for p in passes)
    assert torch.equal(merged[0].pred_sem_seg.data[0], probs.argmax(0))


# ------------------------------------------------------- publish_model

def test_publish_model(tmp_path, capsys):
    model, cfg = build_segmentor(SELDS_DEMO)
    state = model.state_dict()
    state['backbone.mask_head.trained_ratio'] = torch.tensor(0.42)
    state['backbone.mask_head.calibrated_threshold'] = torch.tensor(
        float('nan'))
    classes = tuple(f'class{i}' for i in range(19))
    src = tmp_path / 'iter_30.pth'
    torch.save(dict(
        meta=dict(cfg=cfg.pretty_text, iter=30, seed=np.int64(0),
                  dataset_meta=dict(classes=classes,
                                    palette=np.zeros((19, 3), np.uint8))),
        state_dict=state,
        optimizer=dict(state={0: dict(momentum_buffer=torch.ones(3))}),
        param_schedulers=[dict(last_step=30)],
        message_hub=dict(log_scalars={})), src)
    with pytest.raises(Exception):  # the source needs the full unpickler
        torch.load(src, weights_only=True)

    final = tool('tools/misc/publish_model.py').main(
        [str(src), str(tmp_path / 'out' / 'selds_r18.pth')])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == final
    # float32 0.42 is 0.41999998688697815: printed to 4 digits
    assert 'mask calibration: trained_ratio=0.42, calibrated_threshold=None' \
        in printed, printed
    sha = hashlib.sha256(open(final, 'rb').read()).hexdigest()
    assert final == str(tmp_path / 'out' / f'selds_r18-{sha[:8]}.pth')
    assert os.listdir(tmp_path / 'out') == [osp.basename(final)]

    ckpt = torch.load(final, map_location='cpu', weights_only=True)
    assert set(ckpt) == {'meta', 'state_dict'}  # optimizer etc. gone
    meta = ckpt['meta']
    assert meta['mask_calibration']['trained_ratio'] == pytest.approx(0.42)
    assert meta['mask_calibration']['calibrated_threshold'] is None
    assert meta['iter'] == 30 and meta['seed'] == 0
    assert list(meta['dataset_meta']['classes']) == list(classes)
    for key in ('mmselds_version', 'mmseg_version', 'mmengine_version',
                'torch_version'):
        assert isinstance(meta[key], str) and meta[key]

    # loads, strictly, into a model built from the config it carries
    cfg_path = tmp_path / 'published_config.py'
    cfg_path.write_text(meta['cfg'])
    rebuilt, _ = build_segmentor(str(cfg_path))
    rebuilt.load_state_dict(ckpt['state_dict'], strict=True)
    for key, value in state.items():
        assert torch.equal(rebuilt.state_dict()[key], value) or (
            value.dtype.is_floating_point and value.isnan().all()
            and rebuilt.state_dict()[key].isnan().all()), key
    assert math.isclose(float(rebuilt.backbone.mask_head.trained_ratio),
                        0.42, rel_tol=1e-6)


def test_publish_model_names_a_bad_input(tmp_path):
    bad = tmp_path / 'empty.pth'
    bad.write_bytes(b'')
    with pytest.raises(SystemExit, match=r'empty.pth is not a valid '
                       'checkpoint'):
        tool('tools/misc/publish_model.py').main(
            [str(bad), str(tmp_path / 'x.pth')])
    assert not list(tmp_path.glob('x*'))


def test_publish_model_hash_does_not_depend_on_the_output_name(tmp_path):
    """The same checkpoint published as r1.pth and r2.pth: the same bytes,
    so the same hash in the name (was: torch.save(obj, path) names the
    archive's folder after the file, and the hashes differed)."""
    src = tmp_path / 'iter_30.pth'
    torch.save(dict(meta=dict(iter=30, cfg='model = dict()'),
                    state_dict={'a.weight': torch.ones(4, 3)},
                    optimizer={}), src)
    publish = tool('tools/misc/publish_model.py').main
    first = publish([str(src), str(tmp_path / 'one' / 'r1.pth')])
    second = publish([str(src), str(tmp_path / 'two' / 'r2.pth')])
    assert osp.basename(first)[len('r1'):] == \
        osp.basename(second)[len('r2'):], (first, second)
    assert open(first, 'rb').read() == open(second, 'rb').read()
    sha = hashlib.sha256(open(first, 'rb').read()).hexdigest()
    assert first.endswith(f'-{sha[:8]}.pth')
    ckpt = torch.load(first, map_location='cpu', weights_only=True)
    assert set(ckpt) == {'meta', 'state_dict'}
    assert torch.equal(ckpt['state_dict']['a.weight'], torch.ones(4, 3))


# ---------------------------------------------------- mmseg2selds


def mmseg_deeplabv3(path, **cfg_opts):
    """A stand-in for an mmseg DeepLabV3 release: mmseg's own
    EncoderDecoder/ResNetV1c (the dense demo config), random weights."""
    model, cfg = build_segmentor(DENSE_DEMO, cfg_options=cfg_opts or None)
    assert type(model.backbone).__name__ == 'ResNetV1c'
    randomize_(model, seed=3)
    torch.save(dict(meta=dict(cfg=cfg.pretty_text),
                    state_dict=model.state_dict()), path)
    return model.state_dict()


def test_mmseg2selds_converts_a_deeplabv3_checkpoint(tmp_path, capsys):
    src_state = mmseg_deeplabv3(tmp_path / 'deeplabv3.pth')
    dst = tmp_path / 'selds.pth'
    done = tool('tools/model_converters/mmseg2selds.py').main(
        [str(tmp_path / 'deeplabv3.pth'), SELDS_DEMO, str(dst)])
    out = capsys.readouterr().out
    assert not done['bare'] and not done['dropped']
    assert done['initialised'] and all(
        k.startswith(('backbone.mask_head.', 'backbone.pooling.'))
        for k in done['initialised'])
    # a conversion that fits: the untouched tensors by module, one line
    assert f"{len(done['initialised'])} tensors not in the source (or of " \
        "another shape) keep the config's initialisation (missing keys): " \
        'backbone.mask_head.* (' in out, out
    assert not any(f'  {key}\n' in out for key in done['initialised'])
    ckpt = torch.load(dst, map_location='cpu', weights_only=False)
    assert set(ckpt) == {'meta', 'state_dict'}
    selds, _ = build_segmentor(SELDS_DEMO)
    selds.load_state_dict(ckpt['state_dict'], strict=True)
    for key, value in src_state.items():
        assert torch.equal(selds.state_dict()[key], value), key


def test_mmseg2selds_of_a_complete_source_lists_no_missing_keys(
        tmp_path, capsys):
    """A source that has every tensor of the model (a converted or
    trained selective checkpoint): no line about missing keys (was:
    '0 tensors not in the source ... (missing keys): ' and nothing)."""
    mmseg_deeplabv3(tmp_path / 'deeplabv3.pth')
    convert = tool('tools/model_converters/mmseg2selds.py').main
    convert([str(tmp_path / 'deeplabv3.pth'), SELDS_DEMO,
             str(tmp_path / 'selds.pth')])
    capsys.readouterr()
    done = convert([str(tmp_path / 'selds.pth'), SELDS_DEMO,
                    str(tmp_path / 'again.pth')])
    out = capsys.readouterr().out
    assert not done['initialised'] and done['copied']
    assert 'missing keys' not in out and 'tensors not in the source' \
        not in out, out
    assert f"copied {len(done['copied'])} tensors" in out
    assert 'no tensor of the source is dropped' in out


@pytest.mark.parametrize('script, argv, usage', [
    ('tools/model_converters/mmseg2selds.py', ['{config}', '{src}', '{dst}'],
     'mmseg2selds.py takes SRC CONFIG DST: the mmseg checkpoint, then the '
     'selective config, then the output'),
    ('tools/misc/publish_model.py', ['{config}', '{dst}'],
     'publish_model.py takes IN OUT: the trained checkpoint, then the '
     'output name')])
def test_checkpoint_tools_hint_their_own_argument_order(tmp_path, script,
                                                        argv, usage):
    """A config where the checkpoint belongs (mmseg2selds.py CONFIG
    SRC.pth OUT.pth): the hint gives the tool's own arguments (was: 'The
    tools take CONFIG CHECKPOINT, then the rest', wrong for both)."""
    src = tmp_path / 'deeplabv3.pth'
    torch.save(dict(state_dict={'a.weight': torch.ones(2)}), src)
    names = dict(config=SELDS_DEMO, src=str(src),
                 dst=str(tmp_path / 'out.pth'))
    with pytest.raises(SystemExit) as info:
        tool(script).main([a.format(**names) for a in argv])
    assert str(info.value) == f'error: {SELDS_DEMO} is not a checkpoint ' \
        f'but a text file (arguments in the wrong order? {usage})'
    assert not list(tmp_path.glob('out*'))


def test_a_converted_checkpoint_is_untrained_for_inference(tmp_path, caplog):
    """A converted checkpoint carries every tensor (the mask head's from its
    initialisation), so nothing is missing when a tool loads it: its meta
    says the mask head is untrained, and testing or analysing it warns as
    for an mmseg checkpoint (was: silent, plausible ratios); fine-tuning
    from it, or a checkpoint that training wrote, does not."""
    mmseg_deeplabv3(tmp_path / 'deeplabv3.pth')
    dst = tmp_path / 'selds.pth'
    done = tool('tools/model_converters/mmseg2selds.py').main(
        [str(tmp_path / 'deeplabv3.pth'), SELDS_DEMO, str(dst)])
    ckpt = torch.load(dst, map_location='cpu', weights_only=False)
    model, _ = build_segmentor(SELDS_DEMO)
    logger = logging.getLogger('test.converted')
    trained = dict(meta=dict(iter=30, mmseg_version='1.4.2'),
                   state_dict=ckpt['state_dict'])
    warning = 'reflect a random mask head, not the method'
    for checkpoint, inference, warned in ((ckpt, True, True),
                                          (ckpt, False, False),
                                          (trained, True, False)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger='test.converted'):
            diff = check_checkpoint(checkpoint, model, 'selds.pth',
                                    logger=logger, inference=inference)
        assert diff.ok and not diff.allowed_missing
        lines = [r for r in caplog.records if warning in r.getMessage()]
        assert len(lines) == warned, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='test.converted'):
        check_checkpoint(ckpt, model, 'selds.pth', logger=logger,
                         inference=True)
    message, = [r.getMessage() for r in caplog.records]
    n = sum(k.startswith('backbone.mask_head.') for k in done['initialised'])
    assert n and f'{len(done["initialised"])} tensors under ' \
        'backbone.mask_head.*, backbone.pooling.*' in message, message
    assert 'mmseg2selds.py (converted from deeplabv3.pth)' in message
    # through a tool, as a user runs it
    rc, out = run([sys.executable, 'tools/analysis_tools/get_flops.py',
                   SELDS_DEMO, '--checkpoint', dst, '--shape', 64, 128])
    assert rc == 0 and warning in out and 'mmseg2selds' in out, out[-3000:]


def test_mmseg2selds_output_is_its_own_summary(tmp_path):
    """The command prints what it did, not mmengine's initialisation log
    of every parameter (about 480 of its 520 lines for the R18 demo)."""
    mmseg_deeplabv3(tmp_path / 'deeplabv3.pth')
    rc, out = run([sys.executable, 'tools/model_converters/mmseg2selds.py',
                   tmp_path / 'deeplabv3.pth', SELDS_DEMO,
                   tmp_path / 'selds.pth'])
    assert rc == 0, out[-3000:]
    assert 'KaimingInit' not in out and 'mmengine - INFO' not in out, \
        out[:3000]
    assert len(out.splitlines()) < 80 and 'wrote ' in out
    # the tensors the source lacks, by module, on one line
    assert re.search(r"^\d+ tensors not in the source \(or of another "
                     r"shape\) keep the config's initialisation \(missing "
                     r"keys\): backbone\.mask_head\.\* \(\d+\), "
                     r"backbone\.pooling\.\* \(\d+\)$", out, re.M), out[-3000:]


def test_mmseg2selds_maps_a_bare_backbone(tmp_path, capsys, caplog):
    from mmseg.models.backbones import ResNetV1c
    backbone = randomize_(ResNetV1c(depth=18, **OS8, **NARROW), seed=4)
    # with the ImageNet classifier of a classification checkpoint: dropped
    torch.save(dict(backbone.state_dict(), **{
        'fc.weight': torch.zeros(10, 64), 'fc.bias': torch.zeros(10)}),
        tmp_path / 'resnet18_v1c.pth')
    done = tool('tools/model_converters/mmseg2selds.py').main(
        [str(tmp_path / 'resnet18_v1c.pth'), SELDS_DEMO,
         str(tmp_path / 'selds.pth')])
    assert 'a bare backbone, names mapped to backbone.*' in \
        capsys.readouterr().out
    assert done['bare'] and done['dropped'] == ['fc.weight', 'fc.bias']
    assert any(k.startswith('decode_head.') for k in done['initialised'])
    state = torch.load(tmp_path / 'selds.pth', weights_only=False)[
        'state_dict']
    selds, _ = build_segmentor(SELDS_DEMO)
    selds.load_state_dict(state, strict=True)
    for key, value in backbone.state_dict().items():
        assert torch.equal(selds.state_dict()[f'backbone.{key}'], value)
    # tested as it is: the heads are untrained too, and a warning says so
    logger = logging.getLogger('test.bare')
    with caplog.at_level(logging.WARNING, logger='test.bare'):
        check_checkpoint(torch.load(tmp_path / 'selds.pth',
                                    weights_only=False), selds, 'selds.pth',
                         logger=logger, inference=True)
    heads = [r.getMessage() for r in caplog.records
             if 'predictions and the accuracy' in r.getMessage()]
    n = sum(not k.startswith(('backbone.mask_head.', 'backbone.pooling.'))
            for k in done['initialised'])
    assert len(heads) == 1 and heads[0].startswith(
        f'selds.pth: {n} tensors under auxiliary_head.*, decode_head.* '
        'were filled'), caplog.text


def test_mmseg2selds_refuses_a_shape_mismatch(tmp_path):
    src = mmseg_deeplabv3(tmp_path / 'wide.pth', **{
        'model.decode_head.channels': 48})
    own = build_segmentor(SELDS_DEMO)[0].state_dict()
    first = next(k for k in own if k in src and src[k].shape != own[k].shape)
    with pytest.raises(SystemExit) as info:
        tool('tools/model_converters/mmseg2selds.py').main(
            [str(tmp_path / 'wide.pth'), SELDS_DEMO,
             str(tmp_path / 'out.pth')])
    assert (f'{first}: checkpoint {tuple(src[first].shape)}, model '
            f'{tuple(own[first].shape)}') in str(info.value)
    assert not (tmp_path / 'out.pth').exists()


def edited_deeplabv3(tmp_path, case):
    """An mmseg DeepLabV3 checkpoint that does not fit the R18 selective
    demo config, and the state dict saved in it: ``r34`` (96 extra
    tensors), ``no-layer4`` (30 backbone tensors missing), ``typo``
    (``bacbone.*``: 132 missing, 132 extra)."""
    path = tmp_path / f'{case}.pth'
    if case == 'r34':
        return path, mmseg_deeplabv3(path, **{'model.backbone.depth': 34})
    state = mmseg_deeplabv3(path)
    if case == 'no-layer4':
        state = {k: v for k, v in state.items()
                 if not k.startswith('backbone.layer4.')}
    else:
        state = {k.replace('backbone.', 'bacbone.', 1): v
                 for k, v in state.items()}
    torch.save(dict(meta={}, state_dict=state), path)
    return path, state


# (case, what the error line says: counts and first keys, what it does not)
UNFIT = [
    ('r34', ['96 unexpected keys (in the checkpoint, not in the model): '
             'backbone.layer1.2.conv1.weight, '], ['missing', 'mismatch']),
    ('no-layer4', ['30 missing keys (in the model, not in the checkpoint): '
                   'backbone.layer4.0.conv1.weight, '],
     ['unexpected', 'mismatch']),
    ('typo', ['132 unexpected keys (in the checkpoint, not in the model): '
              'bacbone.stem.0.weight, ', '132 missing keys (in the model, '
              'not in the checkpoint): backbone.stem.0.weight, '],
     ['mismatch']),
]


@pytest.mark.parametrize('case, present, absent', UNFIT)
def test_mmseg2selds_refuses_a_checkpoint_that_does_not_fit(
        tmp_path, case, present, absent):
    """Before: exit 0, the missing tensors left at random initialisation
    and the extra ones dropped, only listed on stdout."""
    src, _ = edited_deeplabv3(tmp_path, case)
    dst = tmp_path / 'out.pth'
    with pytest.raises(SystemExit) as info:
        tool('tools/model_converters/mmseg2selds.py').main(
            [str(src), SELDS_DEMO, str(dst)])
    message = str(info.value.code)  # printed to stderr, exit status 1
    assert message.startswith(f'error: {src} does not fit {SELDS_DEMO}: ')
    assert '\n' not in message
    for text in present:
        assert text in message, message
    for text in absent:
        assert text not in message, message
    # the mask head and pooling are not reported: new in the model
    assert 'mask_head' not in message and 'pooling' not in message
    assert '--no-strict-load' in message
    assert not dst.exists()


def test_mmseg2selds_exits_1_without_a_traceback(tmp_path):
    src, _ = edited_deeplabv3(tmp_path, 'no-layer4')
    rc, out = run([sys.executable, 'tools/model_converters/mmseg2selds.py',
                   src, SELDS_DEMO, tmp_path / 'out.pth'])
    assert rc == 1, out[-3000:]
    assert out.strip().splitlines()[-1].startswith(
        f'error: {src} does not fit'), out[-3000:]
    assert 'Traceback' not in out
    assert not (tmp_path / 'out.pth').exists()


@pytest.mark.parametrize('case', ['r34', 'no-layer4', 'shape'])
def test_mmseg2selds_no_strict_load_converts_what_fits(tmp_path, capsys,
                                                       case):
    if case == 'shape':
        src = tmp_path / 'wide.pth'
        state = mmseg_deeplabv3(src, **{'model.decode_head.channels': 48})
    else:
        src, state = edited_deeplabv3(tmp_path, case)
    dst = tmp_path / 'out.pth'
    done = tool('tools/model_converters/mmseg2selds.py').main(
        [str(src), SELDS_DEMO, str(dst), '--no-strict-load'])
    captured = capsys.readouterr()
    warning = captured.err.strip().splitlines()[-1]
    assert warning.startswith(f'warning: {src} does not fit {SELDS_DEMO}: ')
    assert 'converted what fits' in warning
    selds, _ = build_segmentor(SELDS_DEMO)
    own = selds.state_dict()
    if case == 'r34':
        assert len(done['dropped']) == 96 and '96 unexpected keys' in warning
        assert all(k.startswith('backbone.layer') for k in done['dropped'])
    if case == 'no-layer4':
        layer4 = [k for k in own if k.startswith('backbone.layer4.')]
        assert len(layer4) == 30 and set(layer4) <= set(done['initialised'])
        assert '30 missing keys' in warning
    if case == 'shape':
        assert 'shape mismatches' in warning
        mismatched = [k for k in own if k in state
                      and state[k].shape != own[k].shape]
        assert mismatched and set(mismatched) <= set(done['initialised'])
    for key in done['initialised'] + done['dropped']:
        assert f'  {key}\n' in captured.out
    ckpt = torch.load(dst, map_location='cpu', weights_only=False)
    selds.load_state_dict(ckpt['state_dict'], strict=True)
    assert set(ckpt['meta']['initialised']) == set(done['initialised'])
    assert done['copied'] and set(done['copied']).isdisjoint(
        done['initialised'])
    for key in done['copied']:
        assert torch.equal(ckpt['state_dict'][key], state[key]), key


# ---------------------------------------------------- model zoo files

# the metrics a model's Results may give (ds_ratio: the down-sampling
# ratio tools/test.py prints)
ZOO_METRICS = {'mIoU', 'mIoU(ms+flip)', 'ds_ratio'}


def test_model_index_metafile_and_readme_cover_every_selds_config():
    import yaml
    index = yaml.safe_load(open(osp.join(ROOT, 'model-index.yml')))
    assert index['Import'] == ['configs/selds/metafile.yaml']
    meta = yaml.safe_load(open(osp.join(ROOT, index['Import'][0])))
    collections = {c['Name'] for c in meta['Collections']}
    listed = set()
    for model in meta['Models']:
        assert model['In Collection'] in collections
        assert osp.isfile(osp.join(ROOT, model['Config'])), model['Config']
        assert model['Name'] == osp.splitext(
            osp.basename(model['Config']))[0]
        listed.add(model['Config'])
        for result in model.get('Results') or []:
            assert result['Task'] == 'Semantic Segmentation'
            assert set(result['Metrics']) <= ZOO_METRICS
    configs = {f'configs/selds/{f}' for f in
               os.listdir(osp.join(ROOT, 'configs', 'selds'))
               if f.endswith('.py')}
    assert configs == listed
    readme = open(osp.join(ROOT, 'configs', 'selds', 'README.md')).read()
    for config in configs:
        assert osp.basename(config) in readme, config


def test_readme_model_zoo_example_is_a_metafile_entry():
    """configs/selds/README.md's example of a trained model's metafile
    entry (Results, Weights of a published file) is one the model-zoo
    test above accepts, for an existing config."""
    import yaml
    readme = open(osp.join(ROOT, 'configs', 'selds', 'README.md')).read()
    section = readme.split('### Adding a trained model to the model zoo')[1]
    block = section.split('```yaml\n')[1].split('```')[0]
    model, = yaml.safe_load(textwrap.dedent(block))
    assert osp.isfile(osp.join(ROOT, model['Config']))
    assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]
    assert model['In Collection'] == 'SelDS'
    result, = model['Results']
    assert result['Task'] == 'Semantic Segmentation'
    assert result['Dataset'] == 'Cityscapes'
    assert {'mIoU', 'ds_ratio'} <= set(result['Metrics']) <= ZOO_METRICS
    assert re.fullmatch(r'https://\S+/' + re.escape(model['Name']) +
                        r'-[0-9a-f]{8}\.pth', model['Weights'])
    assert 'publish_model.py' in section


def test_analysis_tools_name_a_checkpoint_that_does_not_fit(tmp_path,
                                                            checkpoints):
    """get_flops.py, benchmark.py, visualize_masks.py, calibrate_mask.py:
    one error line naming the file, exit status 1, no traceback."""
    import cv2
    bad = tmp_path / 'empty.pth'
    bad.write_bytes(b'')
    wrong = checkpoints['r50']
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((64, 128, 3), np.uint8))

    def command(tool, ckpt):
        if tool == 'get_flops.py' or tool == 'benchmark.py':
            return [f'tools/analysis_tools/{tool}', SELDS_DEMO,
                    '--checkpoint', ckpt, '--shape', 64, 128]
        if tool == 'visualize_masks.py':
            return [f'tools/analysis_tools/{tool}', SELDS_DEMO, ckpt, image,
                    '--out-dir', tmp_path / 'vis']
        return [f'tools/misc/{tool}', SELDS_DEMO, ckpt, '--out',
                tmp_path / 'x.pth']

    for tool in ('get_flops.py', 'benchmark.py', 'visualize_masks.py',
                 'calibrate_mask.py'):
        for ckpt, message in ((bad, 'is not a valid checkpoint'),
                              (wrong, 'does not fit the model')):
            proc = toolrun.run(
                [sys.executable, *map(str, command(tool, ckpt))],
                cwd=ROOT, capture_output=True, text=True)
            assert proc.returncode == 1, (tool, proc.stderr[-2000:])
            last = proc.stderr.strip().splitlines()[-1]
            assert last.startswith('error: ') and message in last, last
            assert 'Traceback' not in proc.stderr, tool


def test_a_checkpoint_without_the_decision_buffers_is_a_notice(caplog):
    """The mask head's decision buffers are DECISION_BUFFERS; a checkpoint
    lacking only those (written before they existed) has a trained mask
    head: a notice at INFO, for inference too, never the warning about a
    random mask head; strict loading accepts it even where the mask head
    is not allowed to be missing."""
    from mmselds.models.mask_heads import DepthwiseMaskHead
    from mmselds.utils.checkpoint import DECISION_BUFFERS
    head = DepthwiseMaskHead(8, channels=(8, 8))
    assert set(DECISION_BUFFERS) == {
        name for name, _ in head.named_buffers(recurse=False)}
    model, _ = build_segmentor(SELDS_DEMO)
    state = {k: v for k, v in model.state_dict().items()
             if not k.endswith(DECISION_BUFFERS)}
    assert len(state) == len(model.state_dict()) - 3
    logger = logging.getLogger('test.old')
    for inference, allowed in ((True, ('backbone.mask_head.',)),
                               (False, ()), (True, ())):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger='test.old'):
            diff = check_checkpoint(state, model, 'old.pth', logger=logger,
                                    inference=inference,
                                    allowed_missing=allowed)
        assert diff.ok and len(diff.allowed_missing) == 3
        record, = caplog.records
        assert record.levelno == logging.INFO
        assert record.getMessage().startswith(
            'old.pth: the mask head has no calibrated_threshold/'
            'ratio_updates/trained_ratio buffers'), record.getMessage()
    # one weight of the mask head missing too: the mask head is untrained
    del state[next(k for k in state if k.startswith('backbone.mask_head.')
                   and k.endswith('.weight'))]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='test.old'):
        check_checkpoint(state, model, 'old.pth', logger=logger,
                         inference=True)
    record, = caplog.records
    assert record.levelno == logging.WARNING
    assert 'old.pth: 4 tensors under backbone.mask_head.*' in \
        record.getMessage() and 'random mask head' in record.getMessage()


def test_a_training_state_without_the_decision_buffers_resumes(tmp_path):
    """--resume accepts a training checkpoint of the same model that lacks
    only the mask head's decision buffers (one that lacks the mask head is
    not a state of this model)."""
    from types import SimpleNamespace

    from mmselds.engine.hooks import _not_a_resume_point
    model, _ = build_segmentor(SELDS_DEMO)
    runner = SimpleNamespace(model=model, hooks=[], cfg={})
    for drop, why in (('.trained_ratio', None),
                      ('.weight', 'it lacks')):
        state = {k: v for k, v in model.state_dict().items()
                 if not (k.startswith('backbone.mask_head.')
                         and k.endswith(drop))}
        path = str(tmp_path / 'state.pth')
        torch.save(dict(state_dict=state, optimizer={}, message_hub={},
                        meta=dict(iter=2)), path)
        reason = _not_a_resume_point(runner, path)
        assert (reason is None) if why is None else reason.startswith(why), \
            reason
