"""The generated data set: Cityscapes layout, deterministic, loaded by
mmseg's own CityscapesDataset and pipeline."""
import hashlib
import os.path as osp

import cv2
import numpy as np
from mmseg.datasets import CityscapesDataset

import mmselds  # noqa: F401
from mmselds.datasets import generate, is_generated, render_scene
from mmselds.visualization import boundary_cells
from tests import toolrun
from tests.helpers import cityscapes_dataset


def digest(root):
    h = hashlib.sha256()
    for split in ('train', 'val'):
        for sub in ('leftImg8bit', 'gtFine'):
            ds = CityscapesDataset(data_root=root, data_prefix=dict(
                img_path=f'leftImg8bit/{split}',
                seg_map_path=f'gtFine/{split}'), pipeline=[])
            for info in ds.load_data_list():
                path = info['img_path'] if sub == 'leftImg8bit' else \
                    info['seg_map_path']
                h.update(open(path, 'rb').read())
    return h.hexdigest()


def test_layout_loads_through_cityscapes_dataset(tiny_data):
    dataset = cityscapes_dataset(tiny_data, 'train')
    assert len(dataset) == 16
    sample = dataset[0]
    assert tuple(sample['inputs'].shape) == (3, 64, 128)
    label = sample['data_samples'].gt_sem_seg.data.numpy()
    assert set(np.unique(label)) <= set(range(19)) | {255}
    info = dataset.get_data_info(0)
    assert info['img_path'].endswith('_leftImg8bit.png')
    assert info['seg_map_path'].endswith('_gtFine_labelTrainIds.png')
    city = osp.basename(osp.dirname(info['img_path']))
    assert city in ('aachen', 'bremen', 'zurich')
    assert is_generated(tiny_data, 16, 4)
    assert not is_generated(tiny_data, 17, 4)


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (str(tmp_path / n) for n in 'abc')
    generate(a, 3, 2, (64, 128), seed=5)
    generate(b, 3, 2, (64, 128), seed=5)
    generate(c, 3, 2, (64, 128), seed=6)
    assert digest(a) == digest(b) != digest(c)


def test_scenes_have_flat_regions_and_small_objects():
    """Large flat classes and thin or small ones, with noise."""
    counts = np.zeros(256, int)
    for i in range(8):
        img, label = render_scene(256, 512, np.random.RandomState(i))
        counts += np.bincount(label.ravel(), minlength=256)
        assert img.dtype == np.uint8 and img.shape == (256, 512, 3)
        road = label == 0
        assert img[road].std() > 5  # photometric noise and texture
    share = counts / counts.sum()
    for flat in (0, 2, 10):  # road, building, sky
        assert share[flat] > 0.08
    for small in (5, 7, 11):  # pole, traffic sign, person
        assert 0 < share[small] < 0.03
    edges = boundary_cells(label)
    assert 0.1 < edges.mean() < 0.9  # boundaries are local


def test_boundary_cells():
    label = np.zeros((32, 48), np.uint8)
    label[:, 20:] = 1
    label[0:5, 0:5] = 255  # ignore next to class 0: no boundary
    cells = boundary_cells(label, 16)
    assert cells.shape == (2, 3)
    assert cells.tolist() == [[False, True, False], [False, True, False]]
    assert cv2 is not None


def test_converter_defaults_match_the_demo(tmp_path):
    """The converter's defaults are the demo's data set (128x256, 200 +
    50), shown by --help; generate() defaults to the same size."""
    import inspect
    import sys

    import cv2

    from tests.helpers import ROOT
    script = 'tools/dataset_converters/synthetic_cityscapes.py'
    out = toolrun.run([sys.executable, script, '--help'], cwd=ROOT,
                      capture_output=True, text=True, check=True).stdout
    flat = ' '.join(out.split())
    for shown in ('(default: 200)', '(default: 50)', '(default: (128, 256))',
                  '(default: 0)'):
        assert shown in flat, out
    assert inspect.signature(generate).parameters['size'].default == \
        (128, 256)
    toolrun.run([sys.executable, script, str(tmp_path), '--num-train',
                 '1', '--num-val', '0'], cwd=ROOT, check=True,
                capture_output=True)
    image = cv2.imread(str(next(tmp_path.glob(
        'leftImg8bit/train/*/*_leftImg8bit.png'))))
    assert image.shape == (128, 256, 3)


def _pngs(root, sub):
    import glob
    return sorted(glob.glob(osp.join(root, sub, '*', '*', '*.png')))


def test_generating_again_replaces_the_earlier_data_set(tmp_path):
    """A second run into the same folder leaves exactly its own images (it
    used to write over the first run's and leave the rest: 6 + 2 images of
    two sizes where 3 + 1 were asked for), and the record tells the two
    apart."""
    root = str(tmp_path)
    generate(root, 6, 2, (128, 256), seed=0)
    assert is_generated(root, 6, 2, (128, 256), seed=0)
    assert not is_generated(root, 6, 2, (64, 128), seed=0)  # other size
    assert not is_generated(root, 6, 2, (128, 256), seed=1)  # other seed
    generate(root, 3, 1, (64, 128), seed=0)
    images = _pngs(root, 'leftImg8bit')
    assert len(images) == 4 and len(_pngs(root, 'gtFine')) == 4
    assert {cv2.imread(p).shape for p in images} == {(64, 128, 3)}
    assert len([p for p in images if '/val/' in p]) == 1
    assert is_generated(root, 3, 1, (64, 128), seed=0)
    assert not is_generated(root, 6, 2)
    # an image deleted after generation: not complete any more
    import os
    os.remove(images[0])
    assert not is_generated(root, 3, 1, (64, 128), seed=0)


def test_generator_never_mixes_into_data_it_did_not_write(tmp_path):
    import os

    import pytest
    folder = tmp_path / 'gtFine' / 'train' / 'aachen'
    folder.mkdir(parents=True)
    (folder / 'mine_gtFine_labelTrainIds.png').write_bytes(b'x')
    with pytest.raises(FileExistsError, match=r'1 file under .*did not '
                       r'write .*synthetic_cityscapes.json'):
        generate(str(tmp_path), 1, 1, (64, 128))
    assert os.listdir(folder) == ['mine_gtFine_labelTrainIds.png']
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match='num_train must be an integer '
                           '>= 0'):
            generate(str(tmp_path / 'new'), bad, 1)


def test_generator_command_line_errors(tmp_path):
    import sys

    from tests.helpers import ROOT
    script = 'tools/dataset_converters/synthetic_cityscapes.py'
    (tmp_path / 'gtFine' / 'val').mkdir(parents=True)
    (tmp_path / 'gtFine' / 'val' / 'x.png').write_bytes(b'x')
    for args, message in (
            (['--num-train', '-1'], 'argument --num-train: must be >= 0, '
             'got -1'),
            (['--size', '16', '64'], 'argument --size: must be >= 32, got '
             '16'),
            ([], 'error: ' + str(tmp_path) + ' holds 1 file')):
        out = toolrun.run([sys.executable, script, str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True)
        assert out.returncode != 0 and message in out.stderr, out.stderr
        assert 'Traceback' not in out.stderr


def test_an_interrupted_generation_is_replaced_not_reused(tmp_path):
    """Stopped half-way (Ctrl-C): the folder does not count as generated,
    and the next run replaces it (the record, written first, names the
    files) instead of refusing it as data it did not write."""
    import json

    import pytest

    class Stop(Exception):
        pass

    def stop_after_three(done, total):
        if done == 3:
            raise Stop

    root = str(tmp_path)
    with pytest.raises(Stop):
        generate(root, 4, 2, (64, 128), progress=stop_after_three)
    record = json.load(open(osp.join(root, 'synthetic_cityscapes.json')))
    assert record['complete'] is False
    assert len(_pngs(root, 'leftImg8bit')) == 3
    assert not is_generated(root, 4, 2, (64, 128), seed=0)
    generate(root, 4, 2, (64, 128))
    assert is_generated(root, 4, 2, (64, 128), seed=0)
    assert len(_pngs(root, 'leftImg8bit')) == 6


def test_files_added_to_a_generated_folder_are_kept_and_refused(tmp_path):
    """Regenerating deletes only the files the record names; a file the
    user added is neither deleted nor mixed in. A record that cannot be
    read is an error naming it."""
    import os

    import pytest
    root = str(tmp_path)
    generate(root, 2, 1, (64, 128))
    mine = tmp_path / 'leftImg8bit' / 'val' / 'mycity' / 'x_leftImg8bit.png'
    mine.parent.mkdir()
    mine.write_bytes(b'mine')
    assert not is_generated(root, 2, 1, (64, 128), seed=0)  # an extra file
    with pytest.raises(FileExistsError, match=r'holds 1 file .*not in its '
                       r'synthetic_cityscapes.json; first: .*x_leftImg8bit'):
        generate(root, 3, 1, (64, 128))
    assert mine.read_bytes() == b'mine'
    assert len(_pngs(root, 'gtFine')) == 3  # the data set is untouched
    os.remove(mine)
    (tmp_path / 'synthetic_cityscapes.json').write_text('{"num_tr')
    with pytest.raises(FileExistsError, match='is not a record the '
                       'generator wrote'):
        generate(root, 3, 1, (64, 128))


def test_demo_and_ablation_name_a_folder_they_will_not_generate_into(
        tmp_path):
    """One error line through run_cli, no traceback: the demo on a folder
    with files the generator did not write, the ablation on a folder whose
    record cannot be read."""
    import sys

    from tests.helpers import ROOT
    foreign = tmp_path / 'foreign'
    (foreign / 'gtFine' / 'val').mkdir(parents=True)
    (foreign / 'gtFine' / 'val' / 'x.png').write_bytes(b'x')
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'synthetic_cityscapes.json').write_text('{')
    for tool, root, message in (
            ('tools/demo.py', foreign, 'that the generator did not write'),
            ('tools/ablation.py', broken, 'is not a record the generator '
             'wrote')):
        proc = toolrun.run(
            [sys.executable, tool, '--work-dir', str(tmp_path / 'w'),
             '--data-root', str(root), '--num-train', '2', '--num-val', '1'],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and last.startswith('error: ') and \
            message in last, proc.stderr[-2000:]
        assert 'Traceback' not in proc.stderr
