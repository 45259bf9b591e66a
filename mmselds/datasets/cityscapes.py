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
checked before any is drawn), a polygon of fewer than 2 points (which
``json2labelImg`` cannot draw), annotations without their ``leftImg8bit``
image and annotations whose image size is not their image's (down-sampled
images: labels of another size stop mmseg at the first validation) are
named, not discovered at training time.
"""
import json
import os
import os.path as osp
import re
from contextlib import nullcontext
from multiprocessing import Pool
from typing import Dict, List, Optional, Tuple

SPLITS = ('train', 'val', 'test', 'train_extra')  # train_extra: gtCoarse
# <stem>_gtFine_polygons.json -> <stem>_gtFine_labelTrainIds.png (the same
# for gtCoarse), and <stem> in the split lists, as mmseg's converter
POLYGON_SUFFIX = '_polygons.json'
LABEL_SUFFIX = '_labelTrainIds.png'
ANNOTATION_TAG = re.compile(r'_gt[A-Za-z]+$')  # _gtFine, _gtCoarse
IMAGE_SUFFIX = '_leftImg8bit.png'
# the download each annotation folder comes from
GT_ZIPS = {'gtFine': 'gtFine_trainvaltest.zip', 'gtCoarse': 'gtCoarse.zip'}


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


def check_polygon_file(polygon_file: str) -> Tuple[int, int]:
    """Raise :class:`CityscapesConversionError` naming ``polygon_file``
    unless it is a readable annotation whose labels are all Cityscapes
    labels (as ``json2labelImg`` reads them: ``<label>group`` counts as
    ``<label>``; deleted objects are skipped) and whose drawn polygons
    have 2 points or more (``json2labelImg`` fails on fewer; objects it
    does not draw, deleted or of a negative id, may have any). Returns
    the image size it gives, (height, width)."""
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
    for i, (label, deleted, polygon) in enumerate(objects):
        if deleted:
            continue
        known = label if label in name2label else \
            label[:-len('group')] if label.endswith('group') else label
        if known not in name2label:
            raise CityscapesConversionError(
                f'{polygon_file}: label {label!r} is not a Cityscapes label '
                '(cityscapesscripts.helpers.labels)')
        points = len(polygon) if isinstance(polygon, list) else 0
        if name2label[known].id >= 0 and points < 2:
            raise CityscapesConversionError(
                f'{polygon_file}: object {i} ({label!r}) has a polygon of '
                f'{points} point{"" if points == 1 else "s"}; '
                'cityscapesscripts cannot draw fewer than 2 (remove the '
                'object, or mark it "deleted": 1)')
    return size


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


def _draw_all(files: List[str], nproc: int, progress: bool) -> None:
    """:func:`_draw` every file, in ``nproc`` processes, with mmengine's
    progress bar. On an error the workers are stopped (the pool is closed,
    not left to the interpreter's exit) and the bar's line is ended, so
    that the error starts a line of its own."""
    from mmengine.utils import ProgressBar
    bar = ProgressBar(len(files)) if progress else None
    try:
        # a pool is terminated on leaving the block, error or not
        with Pool(nproc) if nproc > 1 else nullcontext() as pool:
            for _ in pool.imap_unordered(_draw, files) if pool \
                    else map(_draw, files):
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.file.write('\n')
            bar.file.flush()


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
        source = GT_ZIPS.get(osp.basename(osp.normpath(gt_dir)))
        raise CityscapesConversionError(
            f'no annotation folder {gt_root}: data_root must be the '
            f'Cityscapes root holding {gt_dir}/ (from '
            + (source or 'the Cityscapes download') + f') and {img_dir}/')
    files = _polygon_files(gt_root)
    if not files:
        raise CityscapesConversionError(
            f'no *{POLYGON_SUFFIX} annotation files under {gt_root}')
    by_split = {s: [f for f in files if osp.relpath(f, gt_root).split(
        os.sep)[0] == s] for s in SPLITS}
    splits = [s for s in SPLITS if by_split[s]]
    missing, images = [], {}
    for split in splits:
        if split == 'test':  # no labels to train with
            continue
        for f in by_split[split]:
            rel = osp.relpath(f, osp.join(gt_root, split))
            image = osp.join(data_root, img_dir, split,
                             image_stem(rel) + IMAGE_SUFFIX)
            if not osp.isfile(image):
                missing.append(image)
            images[f] = image
    if missing:
        raise CityscapesConversionError(
            f'{len(missing)} annotated images are missing (first: '
            f'{missing[0]}); unpack leftImg8bit_trainvaltest.zip'
            + (' and leftImg8bit_trainextra.zip' if any(
                f'{os.sep}train_extra{os.sep}' in m for m in missing)
               else '') + f' into {data_root}')
    from PIL import Image
    resized = []
    for f in files:  # every file readable and drawable: then draw
        height, width = check_polygon_file(f)
        if f in images:
            try:  # the header only: PIL reads the pixels lazily
                with Image.open(images[f]) as img:
                    size = img.size
            except OSError as e:
                raise CityscapesConversionError(
                    f'cannot read the image {images[f]} ({e})') from None
            if size != (width, height):
                resized.append(f'{f} gives {width}x{height}, {images[f]} '
                               f'is {size[0]}x{size[1]}')
    if resized:
        raise CityscapesConversionError(
            f'{len(resized)} annotations do not have their image\'s size '
            '(width x height): ' + '; '.join(resized[:3])
            + (f'; ... ({len(resized) - 3} more)' if len(resized) > 3
               else '') + '. The label images would not match the images '
            '(mmseg stops at the first validation): convert with the '
            f'original {img_dir} images of the download; to train at '
            'another size, resize in the pipeline (Resize), not the files')

    _draw_all(files, nproc, progress)

    out_dir = out_dir or data_root
    os.makedirs(out_dir, exist_ok=True)
    for split in splits:
        stems = [image_stem(osp.relpath(f, osp.join(gt_root, split)))
                 for f in by_split[split]]
        with open(osp.join(out_dir, f'{split}.txt'), 'w') as fh:
            fh.writelines(s + '\n' for s in stems)
    return {s: len(by_split[s]) for s in splits}
