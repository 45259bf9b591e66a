"""Bad inputs answered with a clear error: a data root whose folders hold
no images (train, test and the analysis tools), visualize_masks.py's
threshold and unreadable images."""
import os
import re
import shutil
import sys

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmselds.datasets import NoImagesError, generate
from mmselds.utils.evaluation import build_test_loader
from mmselds.utils.launch import check_run_data
from tests import toolrun
from tests.helpers import ROOT, SELDS_DEMO, cfg_options

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
NO_VAL_IMAGES = r'leftImg8bit/val holds no images \(no \*_leftImg8bit\.png'


def run_failing(cmd, timeout=300):
    """Run a tool that must fail: (exit status, stdout + stderr)."""
    proc = toolrun.run([str(c) for c in cmd], cwd=ROOT, timeout=timeout,
                       capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    return proc.returncode, out


@pytest.fixture
def empty_root(tmp_path):
    """The Cityscapes folders, no images in them."""
    root = tmp_path / 'empty'
    for sub in ('leftImg8bit/train/aachen', 'leftImg8bit/val/frankfurt',
                'gtFine/train/aachen', 'gtFine/val/frankfurt'):
        (root / sub).mkdir(parents=True)
    return str(root)


def demo_cfg(data_root):
    cfg = Config.fromfile(SELDS_DEMO)
    for loader in LOADERS:
        cfg[loader].dataset.data_root = data_root
    return cfg


def test_check_names_the_folder_without_images(empty_root, tiny_data):
    with pytest.raises(NoImagesError, match=NO_VAL_IMAGES) as error:
        build_test_loader(Config.fromfile(SELDS_DEMO), empty_root)
    assert os.path.join(empty_root, 'leftImg8bit/val') in str(error.value)
    with pytest.raises(NoImagesError,
                       match='train_dataloader: the image folder .*'
                       'leftImg8bit/train holds no images'):
        check_run_data(demo_cfg(empty_root), 'train')
    with pytest.raises(NoImagesError, match='test_dataloader: .*' +
                       NO_VAL_IMAGES):
        check_run_data(demo_cfg(empty_root), 'test')
    # a real data root passes, and the loader is built
    init_default_scope('mmseg')
    check_run_data(demo_cfg(tiny_data), 'train')
    assert len(build_test_loader(Config.fromfile(SELDS_DEMO),
                                 tiny_data).dataset) == 4


def test_check_covers_only_the_data_the_run_reads(tmp_path):
    """A test run needs no training images; training needs them."""
    root = str(tmp_path / 'val_only')
    generate(root, num_train=0, num_val=1, size=(64, 128))
    check_run_data(demo_cfg(root), 'test')
    with pytest.raises(NoImagesError, match='train_dataloader: the image '
                       'folder .*leftImg8bit/train does not exist'):
        check_run_data(demo_cfg(root), 'train')


def test_check_names_images_without_labels(tmp_path):
    """Images whose label files are missing (real Cityscapes before its
    converter writes *_labelTrainIds.png, or no gtFine folder) are named
    before anything is built (was: mmengine's FileNotFoundError from a
    data-loading step); a pipeline without LoadAnnotations (a split
    without labels, the test-server recipe) needs none."""
    import glob
    root = str(tmp_path / 'no_labels')
    generate(root, num_train=2, num_val=2, size=(64, 128))
    labels = sorted(glob.glob(f'{root}/gtFine/val/*/*_labelTrainIds.png'))
    os.remove(labels[1])
    with pytest.raises(NoImagesError, match=(
            r'^test_dataloader: 1 of the 2 images have no label file '
            r'\(\*_gtFine_labelTrainIds\.png in .*gtFine/val\), e\.g\. '
            + re.escape(labels[1]) + r'; for Cityscapes, tools/dataset_'
            r'converters/cityscapes\.py DATA_ROOT writes them')):
        check_run_data(demo_cfg(root), 'test')
    shutil.rmtree(f'{root}/gtFine/train')
    with pytest.raises(NoImagesError, match='train_dataloader: 2 of the 2 '
                       'images have no label file'):
        check_run_data(demo_cfg(root), 'train')
    cfg = demo_cfg(root)  # the test-server recipe's pipeline: no labels
    cfg.test_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
    check_run_data(cfg, 'test')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline  # nested
    with pytest.raises(NoImagesError, match='1 of the 2 images'):
        check_run_data(cfg, 'test')
    # through a tool
    _, out = run_failing([sys.executable, 'tools/train.py', SELDS_DEMO,
                          '--work-dir', tmp_path / 'w', '--cfg-options',
                          *cfg_options(root)])
    assert 'Traceback' not in out and 'error: train_dataloader: 2 of the ' \
        '2 images have no label file' in out, out[-3000:]


def test_check_names_labels_that_do_not_fit_their_images(tmp_path):
    """Label maps of another size than their images (images resized, not
    the labels) and 16-bit labels above 255 (read as 8-bit by mmseg, so
    they wrap around) are named before anything is built (were: a full
    training, then an IndexError from mmseg's IoUMetric at the first
    validation; aAcc 100 on wrapped labels). 16-bit labels of class
    indices read right and pass."""
    import glob

    import cv2
    import numpy as np

    from mmselds.datasets import InvalidLabelError
    root = str(tmp_path / 'data')
    generate(root, num_train=2, num_val=2, size=(64, 128))
    labels = sorted(glob.glob(f'{root}/gtFine/val/*/*_labelTrainIds.png'))
    check_run_data(demo_cfg(root), 'test')
    original = cv2.imread(labels[0], cv2.IMREAD_UNCHANGED)
    cv2.imwrite(labels[0], original.astype(np.uint16))  # 16-bit, <= 255
    check_run_data(demo_cfg(root), 'test')
    cv2.imwrite(labels[0], original.astype(np.uint16) * 256)
    with pytest.raises(InvalidLabelError, match=(
            r'^test_dataloader: ' + re.escape(labels[0]) + r' is a 16-bit '
            r'PNG with values up to \d+: mmseg reads label maps as 8-bit')):
        check_run_data(demo_cfg(root), 'test')
    cv2.imwrite(labels[0], cv2.resize(original, (256, 128),
                                      interpolation=cv2.INTER_NEAREST))
    with pytest.raises(InvalidLabelError, match=(
            re.escape(labels[0]) + r' is 256x128 pixels, its image .*'
            r'_leftImg8bit\.png 128x64: a label map must be the size of its '
            r'image')):
        check_run_data(demo_cfg(root), 'test')
    # through a tool: one line before anything is built
    _, out = run_failing([sys.executable, 'tools/test.py', SELDS_DEMO,
                          'none.pth', '--cfg-options', *cfg_options(root)])
    assert 'Traceback' not in out and 'is 256x128 pixels, its image' in out, \
        out[-3000:]
    # a JPEG stored sideways with an EXIF rotation is read upright (mmcv
    # applies the tag), so labels of its upright size fit
    from PIL import Image

    from mmselds.datasets.checks import check_label_files
    photo, label = str(tmp_path / 'photo.jpg'), str(tmp_path / 'photo.png')
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    Image.new('RGB', (80, 40)).save(photo, exif=exif)
    assert cv2.imread(photo).shape[:2] == (80, 40)  # upright: 40x80
    Image.new('L', (40, 80)).save(label)
    check_label_files([(photo, label)])
    Image.new('L', (80, 40)).save(label)
    with pytest.raises(InvalidLabelError, match='is 80x40 pixels, its image '
                       '.*photo.jpg 40x80'):
        check_label_files([(photo, label)])


def test_label_ids_are_one_error_line_in_training(tmp_path):
    """Labels that are not training IDs stop tools/train.py with one line
    naming the file (was: a traceback ending in torch's "Target 23 is
    out of bounds")."""
    import glob

    import cv2
    root = str(tmp_path / 'data')
    generate(root, num_train=2, num_val=2, size=(64, 128))
    label = sorted(glob.glob(f'{root}/gtFine/train/*/*_labelTrainIds.png'))[0]
    ids = cv2.imread(label, cv2.IMREAD_UNCHANGED)
    ids[ids != 255] = 26  # whatever the random crop keeps
    cv2.imwrite(label, ids)
    _, out = run_failing([sys.executable, 'tools/train.py', SELDS_DEMO,
                          '--work-dir', tmp_path / 'w', '--cfg-options',
                          *cfg_options(root), 'train_cfg.max_iters=2',
                          'train_dataloader.batch_size=2'])
    assert 'Traceback' not in out and f'error: {label} holds label values ' \
        '26: the model has 19 classes (labels 0-18, 255 = ignore)' in out, \
        out[-3000:]


def test_check_reads_an_empty_prefix_as_the_data_root(tmp_path):
    """data_prefix paths of '' are data_root itself, as mmengine joins
    them (was: the working folder)."""
    from mmselds.datasets.checks import check_dataset_images
    (tmp_path / 'a.jpg').write_bytes(b'x')
    (tmp_path / 'a.png').write_bytes(b'x')
    dataset = dict(type='BaseSegDataset', data_root=str(tmp_path),
                   data_prefix=dict(img_path='', seg_map_path=''),
                   img_suffix='.jpg', seg_map_suffix='.png',
                   pipeline=[dict(type='LoadAnnotations')])
    check_dataset_images(dataset)
    os.remove(tmp_path / 'a.png')
    with pytest.raises(NoImagesError, match=re.escape(
            f"1 of the 1 images have no label file (*.png in {tmp_path}), "
            f"e.g. {tmp_path / 'a.png'}")):
        check_dataset_images(dataset)


def test_train_test_and_get_flops_name_the_empty_folder(
        empty_root, tmp_path):
    commands = {
        'train': [sys.executable, 'tools/train.py', SELDS_DEMO,
                  '--work-dir', tmp_path / 'train', '--cfg-options',
                  *cfg_options(empty_root)],
        'test': [sys.executable, 'tools/test.py', SELDS_DEMO,
                 tmp_path / 'never_read.pth', '--work-dir', tmp_path / 'test',
                 '--cfg-options', *cfg_options(empty_root)],
        'get_flops': [sys.executable, 'tools/analysis_tools/get_flops.py',
                      SELDS_DEMO, '--data-root', empty_root],
    }
    for name, cmd in commands.items():
        _, out = run_failing(cmd)
        folder = 'train' if name == 'train' else 'val'
        assert (f'the image folder {empty_root}/leftImg8bit/{folder} holds '
                'no images (no *_leftImg8bit.png') in out, (name, out[-3000:])
        assert 'need at least one array' not in out, name
        assert 'Traceback' not in out, (name, out[-3000:])


def test_read_config_names_a_path_that_is_not_a_config(tmp_path):
    from mmselds.utils.config import InvalidConfigError, read_config
    typo = SELDS_DEMO[:-4] + '.py'  # ...-128x25.py
    with pytest.raises(InvalidConfigError, match=r'config file .*128x25\.py '
                       r'does not exist \(did you mean .*128x256\.py'):
        read_config(typo)
    with pytest.raises(InvalidConfigError, match='does not exist$'):
        read_config(tmp_path / 'nothing' / 'like' / 'it.py')
    ckpt = tmp_path / 'iter_4.pth'
    ckpt.write_bytes(b'x')
    with pytest.raises(InvalidConfigError, match=r'iter_4\.pth is not a '
                       r'config file .*the CONFIG first, then the CHECKPOINT'):
        read_config(ckpt)
    assert read_config(SELDS_DEMO).model.type  # a config reads as before


def test_tools_name_a_bad_config_path_and_a_missing_device(tmp_path):
    """One error line, no traceback (was mmengine's FileNotFoundError /
    "Only py/yml/yaml/json type are supported now!" and torch's "Torch not
    compiled with CUDA enabled" tracebacks)."""
    import torch
    ckpt = tmp_path / 'iter_4.pth'
    ckpt.write_bytes(b'x')
    typo = SELDS_DEMO[:-4] + '.py'
    cases = [
        (['tools/test.py', typo, ckpt], 'error: config file'),
        (['tools/test.py', ckpt, SELDS_DEMO], 'is not a config file'),
        (['tools/train.py', typo], 'error: config file'),
        (['tools/analysis_tools/get_flops.py', typo], 'error: config file'),
        (['tools/analysis_tools/mask_head_flops.py', '--config', typo],
         'error: config file')]
    if not torch.cuda.is_available():
        cases += [
            (['tools/train.py', SELDS_DEMO, '--amp'],
             'error: --amp needs a GPU'),
            (['tools/analysis_tools/benchmark.py', SELDS_DEMO, '--device',
              'cuda'], 'argument --device: cuda: no CUDA device'),
            (['tools/analysis_tools/benchmark_ops.py', '--device', 'cuda:0'],
             'argument --device: cuda:0: no CUDA device')]
    cases.append((['tools/analysis_tools/benchmark_ops.py', '--device',
                   'gpu0'], "argument --device: not a device: 'gpu0'"))
    for cmd, message in cases:
        _, out = run_failing([sys.executable, *cmd])
        assert message in out and 'Traceback' not in out, (cmd, out[-2000:])


def test_misspelt_cfg_options_get_a_hint():
    """A --cfg-options key one letter off an existing one is named with
    the key it probably meant (then mmengine fails on it or adds it); new
    keys that are constructor arguments get no hint."""
    from mmselds.utils.config import misspelt_options, read_config
    cfg = read_config(SELDS_DEMO)
    hints = misspelt_options(cfg, {
        'train_cfg.max_iter': 4, 'param_scheduler.1.ends': 3,
        'model.bakbone.depth': 50, 'train_dataloader.batchsize': 2,
        # right, or new on purpose: no hint
        'train_cfg.max_iters': 4, 'param_scheduler.1.end': 3,
        'model.backbone.mask_head.threshold': 0.7,
        'randomness.deterministic': True, 'work_dir': 'w',
        'model.backbone.execution': 'dense', 'param_scheduler.7.end': 1})
    assert hints == [
        'train_cfg.max_iter: not in the config; did you mean '
        'train_cfg.max_iters?',
        'param_scheduler.1.ends: not in the config; did you mean '
        'param_scheduler.1.end?',
        'model.bakbone.depth: not in the config; did you mean '
        'model.backbone?',
        'train_dataloader.batchsize: not in the config; did you mean '
        'train_dataloader.batch_size?']


def test_a_config_that_changes_a_base_variable_gets_a_hint(tmp_path):
    """A config file that sets a variable its base used when it was read
    (crop_size, data_root) changes nothing that runs, which mmengine does
    silently (training ran at the base's crop); the warning names the
    settings that still hold the old value. A variable re-set together
    with those settings, an unused one and runtime keys get none."""
    from mmselds.utils.config import read_config, stale_variables
    mine = tmp_path / 'mine.py'
    mine.write_text(f"_base_ = [{SELDS_DEMO!r}]\ncrop_size = (64, 128)\n"
                    "data_root = '/data'\nload_from = None\nnew = 3\n")
    lines = stale_variables(str(mine), read_config(mine))
    assert lines == [
        f'mine.py: crop_size = (64, 128) changes a variable that '
        f'{SELDS_DEMO} used when it was read; these settings still hold its '
        'old value (128, 256): model.data_preprocessor.size, '
        'train_dataloader.dataset.pipeline.3.crop_size; set them in this '
        'file too (mmengine merges settings, not variables)',
        f"mine.py: data_root = '/data' changes a variable that {SELDS_DEMO} "
        'used when it was read; these settings still hold its old value '
        "'data/synthetic_cityscapes/': train_dataloader.dataset.data_root, "
        'val_dataloader.dataset.data_root, test_dataloader.dataset.data_root;'
        ' set them in this file too (mmengine merges settings, not '
        'variables)']

    def with_the_settings(base, crop):
        """``crop_size`` re-set with the settings that hold it."""
        mine.write_text(
            f"_base_ = [{base!r}]\ncrop_size = {crop}\n"
            "model = dict(data_preprocessor=dict(size=crop_size))\n"
            "train_dataloader = dict(dataset=dict(pipeline=[\n"
            "    dict(type='LoadImageFromFile'), "
            "dict(type='LoadAnnotations'),\n"
            "    dict(type='RandomCrop', crop_size=crop_size),\n"
            "    dict(type='PackSegInputs')]))\n")
        return stale_variables(str(mine), read_config(mine))

    assert with_the_settings(SELDS_DEMO, (64, 128)) == []
    # a base of a package (mmseg::), as real Cityscapes configs have
    mine.write_text("_base_ = ['mmseg::_base_/datasets/cityscapes.py']\n"
                    "crop_size = (256, 256)\n")
    assert stale_variables(str(mine), read_config(mine)) == [
        'mine.py: crop_size = (256, 256) changes a variable that '
        'mmseg::_base_/datasets/cityscapes.py used when it was read; these '
        'settings still hold its old value (512, 1024): '
        'train_dataloader.dataset.pipeline.3.crop_size; set them in this file'
        ' too (mmengine merges settings, not variables)']
    # the top-level data_preprocessor is unused next to the model's
    cad = os.path.join(ROOT, 'configs', 'selds', 'deeplabv3-selds-cad_r50-d8_'
                       '4xb2-80k_cityscapes-512x1024.py')
    assert with_the_settings(cad, (256, 512)) == []
    # through a tool: the warning in the log
    mine.write_text(f"_base_ = [{SELDS_DEMO!r}]\ncrop_size = (64, 128)\n")
    proc = toolrun.run([sys.executable, 'tools/analysis_tools/get_flops.py',
                        str(mine), '--shape', '64', '128'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and 'WARNING - mine.py: crop_size = (64, ' \
        '128) changes a variable that' in out, out[-3000:]


def test_an_option_on_a_config_variable_gets_a_hint():
    """A top-level --cfg-options key that is a variable of the config file
    (data_root, crop_size, iters) was used when the file was read:
    changing it changes nothing, which mmengine does silently; the hint
    names the settings holding its value (not other variables). Runtime
    keys (work_dir, load_from) and nested keys get none."""
    from mmselds.utils.config import read_config, spent_variables
    cfg = read_config(SELDS_DEMO)
    lines = spent_variables(cfg, {
        'data_root': '/data', 'crop_size': (64, 64), 'iters': 3,
        'work_dir': 'w', 'load_from': 'x.pth', 'model.pretrained': None,
        'new_variable': 1})
    cfg.seed = 0  # a variable of a common value: its paths say nothing
    assert spent_variables(cfg, {'seed': 1}) == []
    assert lines == [
        'data_root: a variable of the config file, used when the file was '
        'read; changing it changes nothing that runs: set the settings that '
        'hold its value instead: train_dataloader.dataset.data_root, '
        'val_dataloader.dataset.data_root, test_dataloader.dataset.data_root',
        'crop_size: a variable of the config file, used when the file was '
        'read; changing it changes nothing that runs: set the settings that '
        'hold its value instead: model.data_preprocessor.size, '
        'train_dataloader.dataset.pipeline.3.crop_size',
        'iters: a variable of the config file, used when the file was read; '
        'changing it changes nothing that runs: set the settings that hold '
        'its value instead: param_scheduler.1.end, train_cfg.max_iters, '
        'train_cfg.val_interval, default_hooks.checkpoint.interval']


def test_train_tool_hints_at_a_misspelt_option(tiny_data, tmp_path):
    proc = toolrun.run(
        [sys.executable, 'tools/train.py', SELDS_DEMO, '--work-dir',
         str(tmp_path), '--cfg-options', *cfg_options(tiny_data),
         'train_cfg.max_iter=2'], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    out = proc.stdout + proc.stderr
    assert ('--cfg-options train_cfg.max_iter: not in the config; did you '
            'mean train_cfg.max_iters?') in out, out[-3000:]
    # mmengine's loop refuses the key: one line, no traceback
    assert proc.returncode == 1 and 'Traceback' not in out, out[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        'error: --cfg-options train_cfg.max_iter: IterBasedTrainLoop takes '
        "no argument 'max_iter'; the config has no such setting and the "
        'option adds it (did you mean max_iters?)')


@pytest.mark.parametrize('tool, option, message', [
    # a constructor default, so not in the config: named by the class
    ('tools/train.py', 'model.backbone.mask_head.thresold=0.6',
     "--cfg-options model.backbone.mask_head.thresold: DepthwiseMaskHead "
     "takes no argument 'thresold'; the config has no such setting and the "
     'option adds it (did you mean threshold?)'),
    ('tools/train.py', 'optim_wrapper.optimizer.zzz=1',
     "--cfg-options optim_wrapper.optimizer.zzz: SGD takes no argument "
     "'zzz'; the config has no such setting and the option adds it "
     '(misspelt, or an option of another class?)'),
    ('tools/analysis_tools/get_flops.py', 'model.backbone.zzz=1',
     "--cfg-options model.backbone.zzz: SelDSResNetV1c takes no argument "
     "'zzz'"),
    # mmengine's runner calls DataLoader itself, inside the loop's build:
    # the class named is DataLoader, not the loop
    ('tools/train.py', 'train_dataloader.batch_sizee=2',
     "--cfg-options train_dataloader.batch_sizee: DataLoader takes no "
     "argument 'batch_sizee'; the config has no such setting and the "
     'option adds it (did you mean batch_size?)'),
    # another type keeps the settings the config gave the old one
    ('tools/analysis_tools/get_flops.py', 'model.backbone.type=ResNetV1c',
     "--cfg-options model.backbone.type=ResNetV1c: ResNetV1c takes no "
     "argument 'mask_head', a setting model.backbone keeps from the "
     "config's SelDSResNetV1c (an option changes the type only, the other "
     'settings stay); give the whole dict in a config that inherits this '
     "one: model = dict(backbone=dict(_delete_=True, type='ResNetV1c', "
     '...))'),
    # the ablation's row check takes any build error for another kind of
    # config, but this one is the option's
    ('tools/ablation.py', 'model.backbone.zzz=1',
     "--cfg-options model.backbone.zzz: SelDSResNetV1c takes no argument "
     "'zzz'"),
    ('tools/ablation.py', 'model.backbone.mask_head.channels=32',
     'DepthwiseMaskHead: channels must be two positive hidden widths'),
])
def test_an_option_no_class_takes_is_one_error_line(tiny_data, tmp_path,
                                                    tool, option, message):
    """A --cfg-options key the config does not have is added to it (a
    constructor's default may be set that way); when the class does not
    take it, the tool names the option instead of mmengine's traceback
    from inside the registry."""
    args = {'tools/train.py': ['--work-dir', str(tmp_path), '--cfg-options',
                               *cfg_options(tiny_data),
                               'train_cfg.max_iters=2', option],
            'tools/analysis_tools/get_flops.py': [
                '--shape', '64', '128', '--cfg-options', option],
            'tools/ablation.py': ['--work-dir', str(tmp_path / 'w'),
                                  '--data-root', tiny_data,
                                  '--cfg-options', option]}[tool]
    proc = toolrun.run([sys.executable, tool, SELDS_DEMO, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and 'Traceback' not in out, out[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f'error: {message}'), out[-3000:]


def test_option_error_names_only_the_options_that_added_the_argument():
    from mmengine.config import Config

    from mmselds.utils import config as config_utils
    for _ in range(2):  # as a tool building several models does
        cfg = Config(dict(model=dict(type='X', depth=18)))
        config_utils.merge_options(cfg, {'model.dpth': 50,
                                         'model.new.sub': 1})
    unrelated = TypeError("f() got an unexpected keyword argument 'depth'")
    assert config_utils.option_error(unrelated) is None
    assert config_utils.option_error(ValueError('dpth')) is None
    # a new subtree is no argument of the class it lands in
    assert config_utils.option_error(TypeError(
        "X.__init__() got an unexpected keyword argument 'new'")) is None
    added = TypeError("X.__init__() got an unexpected keyword argument "
                      "'dpth'")
    assert config_utils.option_error(added) == (
        "--cfg-options model.dpth: X takes no argument 'dpth'; the config "
        'has no such setting and the option adds it (misspelt, or an option '
        'of another class?)')


def test_option_error_names_the_option_that_changed_a_type():
    """An option that changes a dict's ``type`` keeps the dict's other
    keys (mmengine merges): a key the new class does not take is named
    with the option and the config line that replaces the dict; the same
    type (with or without scope) or a key the option did not keep is not
    explained that way."""
    from mmengine.config import Config

    from mmselds.utils import config as config_utils
    cfg = Config(dict(model=dict(type='Seg', head=dict(type='A', rates=1)),
                      heads=[dict(type='C', k=1)]))
    config_utils.merge_options(cfg, {'model.head.type': 'mmseg.B',
                                     'heads.0.type': 'D',
                                     'model.type': 'mmseg.Seg'})
    assert cfg.model.head == dict(type='mmseg.B', rates=1)
    err = TypeError("A.__init__() got an unexpected keyword argument "
                    "'rates'")
    assert config_utils.option_error(err) is None  # not the new type
    err = TypeError("B.__init__() got an unexpected keyword argument "
                    "'rates'")
    assert config_utils.option_error(err) == (
        "--cfg-options model.head.type=mmseg.B: B takes no argument "
        "'rates', a setting model.head keeps from the config's A (an option "
        'changes the type only, the other settings stay); give the whole '
        'dict in a config that inherits this one: model = dict(head=dict('
        "_delete_=True, type='B', ...))")
    assert config_utils.option_error(TypeError(
        "B.__init__() got an unexpected keyword argument 'other'")) is None
    assert config_utils.option_error(TypeError(
        "D() got an unexpected keyword argument 'k'")).endswith(
        "heads.0 = dict(_delete_=True, type='D', ...)")
    assert config_utils.option_error(TypeError(
        "Seg() got an unexpected keyword argument 'head'")) is None


def test_a_checkpoint_url_that_cannot_be_downloaded(tmp_path, monkeypatch):
    """A checkpoint URL that cannot be fetched (no network: here a port
    nothing listens on) is named with the reason and the cache file a
    copy would be read from, not called a corrupt checkpoint."""
    from mmselds.utils.checkpoint import (InvalidCheckpointError,
                                          read_checkpoint)
    from tests.helpers import free_port
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    url = f'http://127.0.0.1:{free_port()}/selds_r18-0123abcd.pth'
    with pytest.raises(InvalidCheckpointError) as info:
        read_checkpoint(url)
    message = str(info.value)
    assert message.startswith(f'downloading {url} failed (') and \
        'no network?' in message, message
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / \
        'selds_r18-0123abcd.pth'
    assert f'copy the file fetched elsewhere to {cached}' in message
    assert 'corrupt' not in message


@pytest.mark.parametrize('option', ['model.pretrained', 'load_from'])
def test_train_tool_names_a_failed_download(tiny_data, tmp_path, option):
    """tools/train.py with model.pretrained (the backbone's init, which
    mmengine downloads itself) or load_from on a URL it cannot fetch: one
    error line naming the URL (was: urllib's traceback, or 'not a valid
    checkpoint (truncated or corrupt?)')."""
    from tests.helpers import free_port
    url = f'http://127.0.0.1:{free_port()}/resnet18_v1c-0123abcd.pth'
    env = dict(os.environ, TORCH_HOME=str(tmp_path / 'torch'))
    proc = toolrun.run(
        [sys.executable, 'tools/train.py', SELDS_DEMO, '--work-dir',
         str(tmp_path / 'w'), '--cfg-options', *cfg_options(tiny_data),
         'train_cfg.max_iters=1', f'{option}={url}'], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and 'Traceback' not in out, out[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: downloading {url} failed (') and \
        str(tmp_path / 'torch' / 'hub' / 'checkpoints') in last, out[-3000:]


@pytest.mark.parametrize('option, message', [
    ('model.backbone.mask_head.channels=32',
     'DepthwiseMaskHead: channels must be two positive hidden widths (c1, '
     'c2), e.g. (128, 64), got 32'),
    ('model.backbone.mask_head.threshold=high',
     "DepthwiseMaskHead: threshold must be None or a number in [0, 1], got "
     "'high'"),
    ('model.backbone.execution=sparce',
     "SelDSResNetV1c: unknown execution mode 'sparce'; expected one of "
     "('auto', 'dense', 'sparse')"),
    (None, "DepthwiseMaskHead takes no argument 'treshold' (did you mean "
     'threshold?)'),
    ('model.data_preprocessor.size=(100,200)',
     'SelDSEncoderDecoder: data_preprocessor.size=(100, 200): inputs are '
     'padded to it, and a selective backbone needs sides that are multiples '
     'of 16 (2x2 cells of the OS8 map): e.g. size=(112, 208) (and the '
     'crop_size of the training pipeline)'),
    ('model.test_cfg.mode=foo', "SelDSEncoderDecoder: test_cfg: mode='foo'; "
     "inference is 'whole' or 'slide' (with crop_size and stride)"),
    ('model.backbone.mask_head.type=DepthwiseMaskHeadd',
     "type='DepthwiseMaskHeadd': no model of that name is registered (did "
     'you mean DepthwiseMaskHead')])
def test_a_value_a_class_refuses_is_one_error_line(tmp_path, option,
                                                   message):
    """A value one of the project's classes checks, given in the config
    or by --cfg-options, a keyword a class does not take written in a
    config file, and a type no registry holds (was mmengine's KeyError
    with a traceback): one error line, no traceback."""
    config = SELDS_DEMO
    if option is None:
        config = tmp_path / 'mine.py'
        config.write_text(f'_base_ = [{SELDS_DEMO!r}]\nmodel = dict(backbone='
                          'dict(mask_head=dict(treshold=0.6)))\n')
    proc = toolrun.run(
        [sys.executable, 'tools/analysis_tools/get_flops.py', str(config),
         '--shape', '64', '128'] + (['--cfg-options', option] if option
                                    else []),
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and 'Traceback' not in out, out[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    if 'registered' in message:  # then the close names the registry holds
        assert last.startswith(f'error: {message}'), out[-3000:]
    else:
        assert last == f'error: {message}', out[-3000:]


class _Base:
    def __init__(self, size=1):
        self.size = size


class _Checked(_Base):
    def __init__(self, size=1, bug=None):
        if bug == 'call':
            dict(a=1).get('a', default=2)  # a call with a wrong keyword
        if bug == 'operand':
            size = None + size  # not a check: a bug
        if bug == 'base':
            super().__init__(sise=size)  # a keyword the config did not give
        if size < 0:
            raise ValueError(f'size must be >= 0, got {size}')


def test_argument_error_keeps_the_traceback_of_bugs(monkeypatch):
    """argument_error explains an unexpected keyword of the class being
    built (any class), and a check a class of this package raised while
    being built; a call error inside a constructor (a bug), an error of
    a class outside the package, or one not raised while building keep
    their tracebacks (None)."""
    from mmengine.registry import Registry, build_from_cfg

    from mmselds.utils import config as config_utils
    registry = Registry('argument_error_test')
    registry.register_module(module=_Checked)

    def error_of(**cfg):
        try:
            build_from_cfg(dict(type='_Checked', **cfg), registry)
        except (TypeError, ValueError) as err:
            return err
        raise AssertionError('built')

    assert config_utils.argument_error(error_of(sise=2)) == \
        "_Checked takes no argument 'sise' (did you mean size?)"
    assert config_utils.argument_error(error_of(size=-1)) is None
    for bug in ('call', 'operand', 'base'):
        assert config_utils.argument_error(error_of(bug=bug)) is None, bug
    monkeypatch.setattr(config_utils, '_PACKAGE', os.path.dirname(
        os.path.abspath(__file__)) + os.sep)  # as if this were mmselds
    assert config_utils.argument_error(error_of(size=-1)) == \
        '_Checked: size must be >= 0, got -1'
    for bug in ('call', 'operand', 'base'):
        assert config_utils.argument_error(error_of(bug=bug)) is None, bug
    assert config_utils.argument_error(ValueError('size')) is None


def test_a_fine_tuning_config_without_its_checkpoint(tiny_data, tmp_path):
    """The demo's fine-tuning configs (-ft) name what they fine-tune
    (CheckLoadFromHook's fine_tunes): without load_from, or --resume with
    nothing to resume, tools/train.py stops with one line saying so (was:
    a run from random initialisation); the option it names trains
    anyway; testing does not need it."""
    from types import SimpleNamespace

    from mmselds.engine.hooks import CheckLoadFromHook
    from mmselds.utils.config import InvalidConfigError, read_config
    ft = os.path.join(ROOT, 'configs', 'demo', 'deeplabv3-selds-cad_r18-'
                      'd8_1xb8-200it-ft_synthcity-128x256.py')
    cfg = read_config(ft)
    hook = CheckLoadFromHook(**{k: v for k, v in cfg.custom_hooks[0].items()
                                if k != 'type'})
    runner = SimpleNamespace(_load_from=None, _resume=True,
                             work_dir=str(tmp_path), cfg=cfg)
    with pytest.raises(InvalidConfigError, match=r'^this config fine-tunes '
                       r'the dense OS8 demo model .* and no checkpoint is '
                       r'given: set load_from \(--cfg-options load_from='
                       r'PATH\); to train it from random initialisation '
                       r'anyway: --cfg-options custom_hooks\.0\.fine_tunes'
                       r'=None$'):
        hook.before_run(runner)
    CheckLoadFromHook(fine_tunes='x', inference=True).before_run(runner)
    CheckLoadFromHook().before_run(runner)  # no fine_tunes: no check

    def train(*options):
        return toolrun.run(
            [sys.executable, 'tools/train.py', ft, '--work-dir',
             str(tmp_path / 'w'), '--cfg-options', *cfg_options(tiny_data),
             'train_cfg.max_iters=1', 'train_dataloader.batch_size=2',
             *options], cwd=ROOT, capture_output=True, text=True,
            timeout=300)
    proc = train()
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'error: this config fine-tunes the dense OS8 demo model'), \
        proc.stderr[-3000:]
    proc = train('custom_hooks.0.fine_tunes=None')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / 'w' / 'iter_1.pth').is_file()


def test_train_tool_refuses_sparse_execution(tiny_data, tmp_path):
    """Training with model.backbone.execution=sparse (BatchNorm statistics
    that cannot train): one error line before the first iteration (was:
    a traceback from inside the first forward)."""
    proc = toolrun.run(
        [sys.executable, 'tools/train.py', SELDS_DEMO, '--work-dir',
         str(tmp_path), '--cfg-options', *cfg_options(tiny_data),
         'train_cfg.max_iters=1', 'model.backbone.execution=sparse'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and 'Traceback' not in out, out[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: execution='sparse' in training mode"), out[-3000:]
    assert 'Iter(train)' not in out


def test_a_checkpoint_url_the_server_refuses(tmp_path, monkeypatch):
    """A URL the server answers with an error (404: a typo) says so and
    asks to check the URL, not about the network; a download cache that
    cannot be written is not called a network failure either."""
    import functools
    import http.server
    import threading

    from mmselds.utils.checkpoint import (InvalidCheckpointError,
                                          read_checkpoint)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = (f'http://127.0.0.1:{server.server_address[1]}/'
               'selds_r18-0123abcd.pth')
        with pytest.raises(InvalidCheckpointError) as info:
            read_checkpoint(url)
    finally:
        server.shutdown()
        server.server_close()
    assert str(info.value) == (
        f'downloading {url} failed: the server answered 404 File not '
        'found; check the URL (a typo? a file the server no longer has?)')
    (tmp_path / 'a_file').write_text('x')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'a_file' / 'torch'))
    with pytest.raises(InvalidCheckpointError) as info:
        read_checkpoint(url)
    assert str(info.value).startswith(f'{url} could not be read: ') and \
        'no network' not in str(info.value), str(info.value)
