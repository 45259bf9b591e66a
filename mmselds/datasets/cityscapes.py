"""Real Cityscapes: the ``*_labelTrainIds.png`` files mmseg's
``CityscapesDataset`` reads, from the ``*_polygons.json`` annotations of
the download (``gtFine_trainvaltest.zip``; ``gtCoarse.zip`` with
``gt_dir='gtCoarse'``).

The conversion is mmseg's (``tools/dataset_converters/cityscapes.py`` of
mmsegmentation, same arguments and outputs: a label image next to each
polygon file, drawn by ``cityscapesscripts``' ``json2labelImg`` in train
ids, and ``train.txt`` / ``val.txt`` / ``test.txt`` listing each split's
image stems), with the checks a first conversion needs: a missing
``cityscapesscripts``, a wrong folder, no polygon files, an unknown label
(``cityscapesscripts`` exits the process on one; here every file is
checked before any is drawn) and annotations without their ``leftImg8bit``
image are named, not discovered at training time.
"""
import json
import os
import os.path as osp
import re
from typing import Dict, List, Optional

SPLITS = ('train', 'val', 'test', 'train_extra')  # train_extra: gtCoarse
# <stem>_gtFine_polygons.json -> <stem>_gtFine_labelTrainIds.png (the same
# for gtCoarse), and <stem> in the split lists, as mmseg's converter
POLYGON_SUFFIX = '_polygons.json'
LABEL_SUFFIX = '_labelTrainIds.png'
ANNOTATION_TAG = re.compile(r'_gt[A-Za-z]+$')  # _gtFine, _gtCoarse
IMAGE_SUFFIX = '_leftImg8bit.png'


class CityscapesConversionError(RuntimeError):
    """The annotations cannot be converted (the message says why)."""


def _json2label():
    try:
        from cityscapesscripts.preparation.json2labelImg import json2labelImg
    except ImportError as e:
        raise CityscapesConversionError(
            'converting Cityscapes annotations needs cityscapesscripts '
            f'({e}); install it with `pip install cityscapesscripts` (or '
            '`pip install -e ".[cityscapes]"`)') from None
    return json2labelImg


def label_path(polygon_file: str) -> str:
    """The label image written for ``polygon_file``."""
    return polygon_file[:-len(POLYGON_SUFFIX)] + LABEL_SUFFIX


def image_stem(polygon_file: str) -> str:
    """``polygon_file`` without ``_gtFine_polygons.json`` (or
    ``_gtCoarse_...``): the stem the split lists and the image name use."""
    return ANNOTATION_TAG.sub('', polygon_file[:-len(POLYGON_SUFFIX)])


def check_polygon_file(polygon_file: str) -> None:
    """Raise :class:`CityscapesConversionError` naming ``polygon_file``
    unless it is a readable annotation whose labels are all Cityscapes
    labels (as ``json2labelImg`` reads them: ``<label>group`` counts as
    ``<label>``; deleted objects are skipped)."""
    _json2label()  # a named error without cityscapesscripts
    from cityscapesscripts.helpers.labels import name2label
    try:
        with open(polygon_file) as f:
            ann = json.load(f)
        size = (int(ann['imgHeight']), int(ann['imgWidth']))
        objects = [(str(o['label']), o.get('deleted', 0), o['polygon'])
                   for o in ann['objects']]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CityscapesConversionError(
            f'{polygon_file} is not a Cityscapes polygon annotation '
            f'({type(e).__name__}: {e})') from None
    if min(size) < 1:
        raise CityscapesConversionError(
            f'{polygon_file}: image size {size} is empty')
    for label, deleted, _ in objects:
        if deleted:
            continue
        known = label if label in name2label else \
            label[:-len('group')] if label.endswith('group') else label
        if known not in name2label:
            raise CityscapesConversionError(
                f'{polygon_file}: label {label!r} is not a Cityscapes label '
                '(cityscapesscripts.helpers.labels)')


def _draw(polygon_file: str) -> str:
    """Draw a polygon file :func:`check_polygon_file` accepted into its
    train-id label image; return the image's path. One
    ``cityscapesscripts`` cannot draw raises
    :class:`CityscapesConversionError` naming the file."""
    out = label_path(polygon_file)
    try:
        _json2label()(polygon_file, out, 'trainIds')
    except SystemExit:  # cityscapesscripts' printError
        raise CityscapesConversionError(
            f'cityscapesscripts could not convert {polygon_file} (its '
            'message is printed above)') from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CityscapesConversionError(
            f'cannot convert {polygon_file}: {type(e).__name__}: {e}') \
            from None
    return out


def _polygon_files(folder: str) -> List[str]:
    found = []
    for dirpath, _, names in os.walk(folder):
        found += [osp.join(dirpath, n) for n in names
                  if n.endswith(POLYGON_SUFFIX)]
    return sorted(found)


def convert_cityscapes(data_root: str, gt_dir: str = 'gtFine',
                       out_dir: Optional[str] = None, nproc: int = 1,
                       img_dir: str = 'leftImg8bit',
                       progress: bool = True) -> Dict[str, int]:
    """Write ``*_gtFine_labelTrainIds.png`` next to every
    ``*_gtFine_polygons.json`` under ``data_root/gt_dir`` (likewise
    ``*_gtCoarse_*``) and the split lists ``{train,val,test}.txt`` into
    ``out_dir`` (default ``data_root``), as mmseg's converter does; a
    split folder without annotations gets no list (gtCoarse has no test
    split: the ``test.txt`` of gtFine stays), gtCoarse's ``train_extra``
    gets its own.

    Args:
        data_root (str): the Cityscapes root (``gtFine/``, ``leftImg8bit/``).
        gt_dir (str): the annotation folder under ``data_root``
            (``gtCoarse``: set ``seg_map_suffix='_gtCoarse_labelTrainIds.png'``
            in the data set's config to train with its labels).
        out_dir (str, optional): where the split lists go.
        nproc (int): worker processes (mmengine's parallel progress).
        img_dir (str): the image folder under ``data_root``; every polygon
            file of a split but test must have its image there.
        progress (bool): show mmengine's progress bar.
    Returns:
        dict: label images written per split.
    Raises:
        CityscapesConversionError: no cityscapesscripts, no annotation
            folder or polygon files, an unconvertible file, or annotations
            of a split but test without their image.
    """
    if nproc < 1:
        raise ValueError(f'nproc must be >= 1, got {nproc}')
    _json2label()  # named error before any work
    gt_root = osp.join(data_root, gt_dir)
    if not osp.isdir(gt_root):
        raise CityscapesConversionError(
            f'no annotation folder {gt_root}: data_root must be the '
            f'Cityscapes root holding {gt_dir}/ (from the download, e.g. '
            f'gtFine_trainvaltest.zip) and {img_dir}/')
    files = _polygon_files(gt_root)
    if not files:
        raise CityscapesConversionError(
            f'no *{POLYGON_SUFFIX} annotation files under {gt_root}')
    by_split = {s: [f for f in files if osp.relpath(f, gt_root).split(
        os.sep)[0] == s] for s in SPLITS}
    splits = [s for s in SPLITS if by_split[s]]
    missing = []
    for split in splits:
        if split == 'test':  # no labels to train with
            continue
        for f in by_split[split]:
            rel = osp.relpath(f, osp.join(gt_root, split))
            image = osp.join(data_root, img_dir, split,
                             image_stem(rel) + IMAGE_SUFFIX)
            if not osp.isfile(image):
                missing.append(image)
    if missing:
        raise CityscapesConversionError(
            f'{len(missing)} annotated images are missing (first: '
            f'{missing[0]}); unpack leftImg8bit_trainvaltest.zip'
            + (' and leftImg8bit_trainextra.zip' if any(
                f'{os.sep}train_extra{os.sep}' in m for m in missing)
               else '') + f' into {data_root}')
    for f in files:  # every file readable and its labels known: then draw
        check_polygon_file(f)

    from mmengine.utils import track_parallel_progress, track_progress
    if nproc > 1:
        track_parallel_progress(_draw, files, nproc)
    elif progress:
        track_progress(_draw, files)
    else:
        for f in files:
            _draw(f)

    out_dir = out_dir or data_root
    os.makedirs(out_dir, exist_ok=True)
    for split in splits:
        stems = [image_stem(osp.relpath(f, osp.join(gt_root, split)))
                 for f in by_split[split]]
        with open(osp.join(out_dir, f'{split}.txt'), 'w') as fh:
            fh.writelines(s + '\n' for s in stems)
    return {s: len(by_split[s]) for s in splits}
