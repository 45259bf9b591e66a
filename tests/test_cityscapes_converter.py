"""The real-Cityscapes converter on a generated stand-in: polygon files in
the download's layout -> label images that mmseg's CityscapesDataset loads
(the path a user with the real data takes), and its named errors."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mmselds.datasets import CityscapesConversionError, convert_cityscapes
from tests import toolrun
from tests.helpers import ROOT, cityscapes_dataset

SCRIPT = 'tools/dataset_converters/cityscapes.py'
H, W = 32, 64
# (train id, label, polygon): road fills the lower half; a car box and a
# 'cargroup' box (cityscapesscripts maps '<label>group' to the label) on
# top; a license plate (id -1: never drawn) inside the car
OBJECTS = [
    ('road', [[0, 16], [63, 16], [63, 31], [0, 31]]),
    ('car', [[8, 10], [23, 10], [23, 25], [8, 25]]),
    ('cargroup', [[40, 2], [47, 2], [47, 9], [40, 9]]),
    ('license plate', [[12, 20], [15, 20], [15, 22], [12, 22]]),
]
STEMS = {'train': ['aachen/aachen_000000_000019',
                   'bremen/bremen_000001_000019'],
         'val': ['frankfurt/frankfurt_000000_000294'],
         'test': ['berlin/berlin_000000_000019']}


def _stand_in(root, objects=OBJECTS, images=True, gt='gtFine',
              stems=STEMS):
    for split, names in stems.items():
        for stem in names:
            poly = osp.join(root, gt, split, f'{stem}_{gt}_polygons.json')
            os.makedirs(osp.dirname(poly), exist_ok=True)
            with open(poly, 'w') as f:
                json.dump(dict(imgHeight=H, imgWidth=W, objects=[
                    dict(label=label, polygon=polygon)
                    for label, polygon in objects]), f)
            if images:
                img = osp.join(root, 'leftImg8bit', split,
                               stem + '_leftImg8bit.png')
                os.makedirs(osp.dirname(img), exist_ok=True)
                cv2.imwrite(img, np.full((H, W, 3), 128, np.uint8))
    return str(root)


def _expected():
    """Train ids drawn by hand: road 0, car 13 (the cargroup too),
    unlabeled 255; the license plate is not drawn (the car shows)."""
    y = np.full((H, W), 255, np.uint8)
    y[16:32, :] = 0
    y[10:26, 8:24] = 13
    y[2:10, 40:48] = 13
    return y


def test_converts_and_loads_through_cityscapes_dataset(tmp_path):
    pytest.importorskip('cityscapesscripts')
    root = _stand_in(tmp_path / 'cityscapes')
    run = toolrun.run([sys.executable, SCRIPT, root], cwd=ROOT,
                      capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert 'train 2, val 1, test 1' in run.stdout
    for split, stems in STEMS.items():
        assert open(osp.join(root, f'{split}.txt')).read().split() == \
            sorted(stems)
        for stem in stems:
            label = cv2.imread(osp.join(
                root, 'gtFine', split, stem + '_gtFine_labelTrainIds.png'),
                cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(label, _expected())

    dataset = cityscapes_dataset(root, 'train')
    assert len(dataset) == 2
    seg = dataset[0]['data_samples'].gt_sem_seg.data[0].numpy()
    np.testing.assert_array_equal(seg, _expected())


def test_split_lists_go_to_out_dir_with_workers(tmp_path):
    pytest.importorskip('cityscapesscripts')
    root = _stand_in(tmp_path / 'cityscapes')
    counts = convert_cityscapes(root, out_dir=str(tmp_path / 'splits'),
                                nproc=2)
    assert counts == dict(train=2, val=1, test=1)
    assert sorted(os.listdir(tmp_path / 'splits')) == [
        'test.txt', 'train.txt', 'val.txt']
    assert not osp.exists(osp.join(root, 'train.txt'))
    label = cv2.imread(osp.join(root, 'gtFine', 'val', STEMS['val'][0] +
                                '_gtFine_labelTrainIds.png'),
                       cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(label, _expected())


def test_coarse_annotations_with_train_extra(tmp_path):
    """--gt-dir gtCoarse (its own file names, a train_extra split): label
    images next to the polygons, split lists of image stems, and mmseg's
    CityscapesDataset reads them with the coarse suffix."""
    pytest.importorskip('cityscapesscripts')
    stems = dict(train=STEMS['train'], val=STEMS['val'],
                 train_extra=['augsburg/augsburg_000000_000000'])
    root = _stand_in(tmp_path / 'cityscapes', gt='gtCoarse', stems=stems)
    run = toolrun.run([sys.executable, SCRIPT, root, '--gt-dir',
                       'gtCoarse'], cwd=ROOT, capture_output=True,
                      text=True)
    assert run.returncode == 0, run.stderr
    assert 'train 2, val 1, train_extra 1' in run.stdout, run.stdout
    assert not osp.exists(osp.join(root, 'test.txt'))  # no test split
    for split, names in stems.items():
        assert open(osp.join(root, f'{split}.txt')).read().split() == \
            sorted(names)
        for stem in names:
            label = cv2.imread(osp.join(
                root, 'gtCoarse', split,
                stem + '_gtCoarse_labelTrainIds.png'), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(label, _expected())
    dataset = cityscapes_dataset(root, 'train_extra', gt='gtCoarse')
    assert len(dataset) == 1
    seg = dataset[0]['data_samples'].gt_sem_seg.data[0].numpy()
    np.testing.assert_array_equal(seg, _expected())
    # its images are checked as train's are
    os.remove(osp.join(root, 'leftImg8bit', 'train_extra',
                       stems['train_extra'][0] + '_leftImg8bit.png'))
    with pytest.raises(CityscapesConversionError,
                       match='1 annotated images are missing .*train_extra'
                       '.* and leftImg8bit_trainextra.zip into'):
        convert_cityscapes(root, gt_dir='gtCoarse')


@pytest.mark.parametrize('case', ['no_gt_dir', 'no_coarse_dir',
                                  'no_polygons', 'unknown_label',
                                  'missing_image', 'one_point_polygon',
                                  'empty_polygon', 'resized_image'])
def test_named_errors(tmp_path, case):
    """Each bad tree: one error line naming what is wrong, before any
    label image is written (was, for a polygon of fewer than 2 points:
    cityscapesscripts' TypeError after some label images were written;
    for down-sampled images: no error, and mmseg's crash at the first
    validation; for gtCoarse: the zip of gtFine named)."""
    pytest.importorskip('cityscapesscripts')
    root = tmp_path / 'cityscapes'
    args = []
    if case == 'no_gt_dir':
        root.mkdir()
        expect = ('no annotation folder', '(from gtFine_trainvaltest.zip)')
    elif case == 'no_coarse_dir':
        _stand_in(root)  # gtFine only
        args = ['--gt-dir', 'gtCoarse']
        expect = ('no annotation folder', 'holding gtCoarse/ (from '
                  'gtCoarse.zip) and leftImg8bit/')
    elif case in ('one_point_polygon', 'empty_polygon'):
        polygon = [[3, 3]] if case == 'one_point_polygon' else []
        # the license plate (never drawn) may be degenerate: no error
        _stand_in(root, objects=OBJECTS + [('license plate', [])])
        bad = osp.join(root, 'gtFine', 'val', STEMS['val'][0] +
                       '_gtFine_polygons.json')
        with open(bad, 'w') as f:
            json.dump(dict(imgHeight=H, imgWidth=W, objects=[
                dict(label=label, polygon=points)
                for label, points in OBJECTS[:2] + [('car', polygon)]]), f)
        expect = (f"{bad}: object 2 ('car') has a polygon of "
                  f"{len(polygon)} point{'s' * (not polygon)}; "
                  'cityscapesscripts cannot draw fewer than 2', )
    elif case == 'resized_image':
        _stand_in(root)
        image = osp.join(root, 'leftImg8bit', 'val',
                         STEMS['val'][0] + '_leftImg8bit.png')
        cv2.imwrite(image, np.zeros((H // 2, W // 2, 3), np.uint8))
        expect = ("1 annotations do not have their image's size (width x "
                  f'height): {root}/gtFine/val/{STEMS["val"][0]}_gtFine_'
                  f'polygons.json gives {W}x{H}, {image} is {W // 2}x'
                  f'{H // 2}. ', 'the first validation')
    elif case == 'no_polygons':
        (root / 'gtFine' / 'train').mkdir(parents=True)
        expect = ('no *_polygons.json annotation files', )
    elif case == 'unknown_label':
        _stand_in(root, objects=[('roadd', [[0, 0], [5, 0], [5, 5]])])
        expect = ("label 'roadd' is not a Cityscapes label", )
    else:
        _stand_in(root, images=False)
        expect = ('annotated images are missing', )
    run = toolrun.run([sys.executable, SCRIPT, str(root)] + args, cwd=ROOT,
                      capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.startswith('error: ') and \
        run.stderr.count('\n') == 1, run.stderr
    for text in expect:
        assert text in run.stderr, run.stderr
    if case == 'unknown_label':  # the file is named
        assert '_gtFine_polygons.json' in run.stderr, run.stderr
    if root.is_dir():  # nothing was written
        assert not list(root.rglob('*_labelTrainIds.png'))
        assert not list(root.glob('*.txt'))


def test_an_error_in_a_worker_ends_cleanly(tmp_path):
    """--nproc 2 and a file that cannot be written: the pool is closed
    and the error starts its own line, after the progress bar's (was:
    'error: ...' glued to the bar, then 'Exception ignored in: <function
    Pool.__del__ ...> OSError: [Errno 9] Bad file descriptor')."""
    pytest.importorskip('cityscapesscripts')
    root = _stand_in(tmp_path / 'cityscapes')
    label = osp.join(root, 'gtFine', 'train',
                     STEMS['train'][0] + '_gtFine_labelTrainIds.png')
    os.makedirs(label)  # a folder where the label image goes
    # a real interpreter: its exit is where the pool left open failed
    run = subprocess.run([sys.executable, SCRIPT, root, '--nproc', '2'],
                         cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 1, out
    assert re.search(f'^error: cannot convert .*{re.escape(label)}', out,
                     re.M), out
    assert '0/4' in out.split('error: ')[0]  # after the bar's line
    assert 'Exception ignored' not in out and 'Traceback' not in out, out


def test_missing_cityscapesscripts_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules,
                        'cityscapesscripts.preparation.json2labelImg', None)
    with pytest.raises(CityscapesConversionError,
                       match='pip install cityscapesscripts'):
        convert_cityscapes(_stand_in(tmp_path / 'cityscapes'),
                           progress=False)
