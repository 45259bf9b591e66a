"""A synthetic street-scene data set in exact Cityscapes layout.

Large flat, textured regions (road, sidewalk, building, vegetation, terrain,
sky) and small detailed objects (poles, traffic lights and signs, persons,
riders, cars, bicycles) whose boundaries need full resolution, with
photometric noise. Labels are the 19 Cityscapes train ids, 255 = ignore (the
ego-vehicle hood). Deterministic for a given seed and size::

    leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelTrainIds.png

mmseg's ``CityscapesDataset`` loads it unchanged.
"""
import json
import os
import os.path as osp
from typing import Dict, Iterable, Optional, Tuple

import cv2
import numpy as np

# train ids of mmseg's CityscapesDataset.METAINFO['classes']
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, \
    TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, \
    BICYCLE = range(19)
IGNORE = 255

# mean BGR colour and texture strength of each class; neighbours overlap on
# purpose (road/sidewalk, vegetation/terrain, person/rider)
APPEARANCE: Dict[int, Tuple[Tuple[int, int, int], float]] = {
    ROAD: ((110, 105, 100), 10), SIDEWALK: ((150, 140, 140), 12),
    BUILDING: ((90, 110, 140), 25), WALL: ((120, 130, 130), 15),
    FENCE: ((100, 130, 160), 20), POLE: ((70, 70, 70), 6),
    LIGHT: ((40, 160, 200), 8), SIGN: ((40, 200, 220), 8),
    VEGETATION: ((50, 130, 60), 35), TERRAIN: ((90, 160, 130), 25),
    SKY: ((230, 190, 140), 6), PERSON: ((60, 40, 180), 20),
    RIDER: ((90, 40, 200), 20), CAR: ((140, 60, 40), 15),
    TRUCK: ((60, 80, 120), 15), BUS: ((60, 120, 200), 15),
    TRAIN: ((100, 100, 60), 15), MOTORCYCLE: ((150, 50, 120), 15),
    BICYCLE: ((160, 40, 140), 12),
}
DEFAULT_SIZE = (128, 256)  # (H, W) of the demo configs and the README
CITIES = {'train': ('aachen', 'bremen', 'zurich'),
          'val': ('frankfurt', 'lindau')}
SPLITS = ('train', 'val')
# what generate() wrote: written before the first image, marked complete
# after the last
RECORD = 'synthetic_cityscapes.json'
SPLIT_DIRS = tuple(osp.join(sub, split) for sub in ('leftImg8bit', 'gtFine')
                   for split in SPLITS)


class GeneratedDataError(FileExistsError):
    """A data folder the generator will not write into: files it did not
    write, or a record it cannot read."""


def _paint(img, label, region, cls, rng):
    """Fill ``region`` (bool mask) with class ``cls``: colour, texture."""
    color, texture = APPEARANCE[cls]
    n = int(region.sum())
    if n == 0:
        return
    shade = rng.normal(0, 12, 3)
    noise = rng.normal(0, texture, (n, 1)) + rng.normal(0, texture / 3, (n, 3))
    img[region] = np.clip(np.array(color) + shade + noise, 0, 255)
    label[region] = cls


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


def _poly(shape, points):
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(points).astype(np.int32)], 1)
    return m.astype(bool)


def _ellipse(shape, cy, cx, ry, rx):
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, (int(cx), int(cy)), (max(int(rx), 1), max(int(ry), 1)), 0,
                0, 360, 1, -1)
    return m.astype(bool)


def render_scene(height: int, width: int,
                 rng: np.random.RandomState) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: (BGR uint8 image (H, W, 3), train-id label (H, W))."""
    shape = (height, width)
    img = np.zeros(shape + (3, ), np.float64)
    label = np.full(shape, IGNORE, np.uint8)
    horizon = int(height * rng.uniform(0.35, 0.5))
    _paint(img, label, _rect(shape, 0, height, 0, width), SKY, rng)
    # buildings and vegetation along the horizon
    x = 0
    while x < width:
        w = int(width * rng.uniform(0.08, 0.25))
        top = int(horizon * rng.uniform(0.05, 0.7))
        cls = BUILDING if rng.rand() < 0.65 else VEGETATION
        if cls == VEGETATION:
            region = _ellipse(shape, horizon, x + w / 2, horizon - top,
                              w / 1.6)
            region &= _rect(shape, 0, horizon + 1, 0, width)
        else:
            region = _rect(shape, top, horizon + 1, x, x + w)
        _paint(img, label, region, cls, rng)
        if cls == BUILDING:  # windows: texture the flat region
            for wy in range(top + 4, horizon - 4, 8):
                for wx in range(x + 3, x + w - 3, 8):
                    if rng.rand() < 0.7:
                        img[wy:wy + 3, wx:wx + 3] *= 0.6
        x += w
    # ground: road trapezoid, sidewalks and terrain
    ground = _rect(shape, horizon, height, 0, width)
    _paint(img, label, ground, TERRAIN if rng.rand() < 0.5 else SIDEWALK,
           rng)
    vx = width * rng.uniform(0.35, 0.65)
    left = width * rng.uniform(-0.3, 0.15)
    right = width * rng.uniform(0.85, 1.3)
    road = _poly(shape, [(vx - 4, horizon), (vx + 4, horizon), (right, height),
                         (left, height)])
    walk = _poly(shape, [(vx - 8, horizon), (vx + 8, horizon),
                         (right + width * 0.15, height),
                         (left - width * 0.15, height)]) & ~road
    _paint(img, label, walk & ground, SIDEWALK, rng)
    _paint(img, label, road, ROAD, rng)
    # lane marks (road texture, still road)
    for t in np.linspace(0.1, 0.9, 6):
        y = int(horizon + t * (height - horizon))
        img[y:y + max(1, int(3 * t)), int(vx - 2 + (width / 2 - vx) * t):
            int(vx + 2 + (width / 2 - vx) * t + 4 * t)] = 230
    # a fence or wall segment on the sidewalk side
    if rng.rand() < 0.5:
        fx = int(width * rng.uniform(0, 0.7))
        fh = int(height * rng.uniform(0.04, 0.08))
        _paint(img, label, _rect(shape, horizon - fh, horizon + 2, fx,
                                 fx + int(width * 0.25)),
               FENCE if rng.rand() < 0.5 else WALL, rng)
    # small objects, farther (smaller) near the horizon
    for _ in range(rng.randint(6, 14)):
        t = rng.uniform(0.05, 1.0)  # depth: 0 far, 1 near
        base = int(horizon + t * (height - horizon) * 0.9)
        s = height * (0.08 + 0.35 * t)  # object height in pixels
        cx = rng.uniform(0, width)
        kind = rng.choice(['pole', 'person', 'rider', 'car', 'bicycle'],
                          p=[0.3, 0.25, 0.1, 0.25, 0.1])
        if kind == 'pole':
            pw = max(1, int(s * 0.04))
            top = int(base - 1.8 * s)
            _paint(img, label, _rect(shape, top, base, int(cx), int(cx) + pw),
                   POLE, rng)
            head = SIGN if rng.rand() < 0.6 else LIGHT
            hs = max(2, int(s * 0.12))
            _paint(img, label, _rect(shape, top, top + hs * (2 if head == LIGHT
                                                             else 1),
                                     int(cx) - hs // 2, int(cx) + hs),
                   head, rng)
        elif kind in ('person', 'rider'):
            body = _ellipse(shape, base - s * 0.45, cx, s * 0.35, s * 0.1)
            body |= _ellipse(shape, base - s * 0.9, cx, s * 0.09, s * 0.07)
            if kind == 'rider':
                bike = _ellipse(shape, base - s * 0.12, cx, s * 0.12, s * 0.3)
                _paint(img, label, bike, BICYCLE, rng)
                body = _ellipse(shape, base - s * 0.55, cx, s * 0.3, s * 0.1)
            _paint(img, label, body, RIDER if kind == 'rider' else PERSON,
                   rng)
        elif kind == 'car':
            cw, ch = s * rng.uniform(0.8, 1.4), s * 0.45
            _paint(img, label, _rect(shape, int(base - ch), base,
                                     int(cx - cw / 2), int(cx + cw / 2)),
                   CAR if rng.rand() < 0.8 else TRUCK, rng)
        else:
            _paint(img, label, _ellipse(shape, base - s * 0.15, cx, s * 0.15,
                                        s * 0.3), BICYCLE, rng)
    # ego-vehicle hood: ignored, as in Cityscapes
    if rng.rand() < 0.5:
        hood = _ellipse(shape, height * 1.15, width / 2, height * 0.2,
                        width * 0.6)
        img[hood] = 20
        label[hood] = IGNORE
    # photometric noise: brightness, contrast, sensor noise, slight blur
    img = img * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20)
    img += rng.normal(0, 6, img.shape)
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (3, 3), 0.6)
    return img, label


def generate(out_dir: str, num_train: int = 200, num_val: int = 50,
             size: Tuple[int, int] = DEFAULT_SIZE, seed: int = 0,
             progress: Iterable = None) -> Dict[str, int]:
    """Write the data set to ``out_dir``; return the image count per split.

    Args:
        out_dir (str): data root (``data_root`` of the configs).
        num_train (int): training images. Default: 200.
        num_val (int): validation images. Default: 50.
        size (tuple[int, int]): (height, width). Default: (128, 256), the
            demo configs' size.
        seed (int): base seed; image i of a split uses its own seed, so the
            output is the same for the same arguments. Default: 0.
        progress (callable, optional): called as ``progress(n_done, total)``.

    A data set this function wrote into ``out_dir`` before, finished or
    interrupted, is replaced: its record (``synthetic_cityscapes.json``,
    written before the first image and marked complete after the last)
    names its files, and only those are deleted. Other files under the
    split folders are never deleted or mixed in: a
    :class:`GeneratedDataError` naming them.
    """
    height, width = size
    if height < 32 or width < 32:
        raise ValueError(f'size must be at least 32x32, got {height}x{width}')
    for name, count in (('num_train', num_train), ('num_val', num_val)):
        if isinstance(count, bool) or not isinstance(count, int) \
                or count < 0:
            raise ValueError(f'{name} must be an integer >= 0, got '
                             f'{count!r}')
    _clear_generated(out_dir)
    record = dict(num_train=num_train, num_val=num_val,
                  size=[height, width], seed=seed, complete=False)
    os.makedirs(out_dir, exist_ok=True)
    _write_record(out_dir, record)
    total = num_train + num_val
    for done, (split, i, paths) in enumerate(
            _files(out_dir, num_train, num_val), 1):
        rng = np.random.RandomState([seed, SPLITS.index(split), i])
        img, label = render_scene(height, width, rng)
        for path, data in zip(paths, (img, label)):
            os.makedirs(osp.dirname(path), exist_ok=True)
            if not cv2.imwrite(path, data):
                raise OSError(f'could not write {path}')
        if progress is not None:
            progress(done, total)
    _write_record(out_dir, dict(record, complete=True))
    return dict(train=num_train, val=num_val)


def _files(out_dir: str, num_train: int, num_val: int):
    """(split, index, (image path, label path)) of every image a data set
    of these counts has, in the order they are written."""
    for split, count in zip(SPLITS, (num_train, num_val)):
        for i in range(count):
            city = CITIES[split][i % len(CITIES[split])]
            stem = f'{city}_{i // 100:06d}_{i % 100:06d}'
            yield split, i, tuple(
                osp.join(out_dir, sub, split, city, stem + suffix + '.png')
                for sub, suffix in (('leftImg8bit', '_leftImg8bit'),
                                    ('gtFine', '_gtFine_labelTrainIds')))


def _expected_files(out_dir: str, num_train: int, num_val: int) -> set:
    """Every file (images and labels) a data set of these counts has."""
    return {path for _, _, paths in _files(out_dir, num_train, num_val)
            for path in paths}


def _write_record(out_dir: str, record: dict) -> None:
    tmp = osp.join(out_dir, RECORD + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(record, f)
    os.replace(tmp, osp.join(out_dir, RECORD))  # never half-written


def _split_files(out_dir: str) -> list:
    return [osp.join(root, name) for sub in SPLIT_DIRS
            for root, _, names in os.walk(osp.join(out_dir, sub))
            for name in names]


def read_record(out_dir: str) -> Optional[dict]:
    """What :func:`generate` wrote into ``out_dir`` (``num_train``,
    ``num_val``, ``size``, ``seed``, ``complete``: False while it writes),
    or None if it has no record."""
    path = osp.join(out_dir, RECORD)
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        int(record['num_train']), int(record['num_val'])
    except (ValueError, KeyError, TypeError) as err:
        raise GeneratedDataError(
            f'{path} is not a record the generator wrote ({err}): delete '
            f'the folder {out_dir} or choose another one') from None
    return record


def _clear_generated(out_dir: str) -> None:
    """Delete the files of the data set :func:`generate` wrote into
    ``out_dir`` before (its record names them) and the record; refuse if
    the split folders hold other files."""
    record = read_record(out_dir)
    ours = set() if record is None else _expected_files(
        out_dir, record['num_train'], record['num_val'])
    others = sorted(set(_split_files(out_dir)) - ours)
    if others:
        n = len(others)
        why = (f'no {RECORD}: another tool\'s data, or data generated '
               'before the generator kept a record' if record is None else
               f'they are not in its {RECORD}')
        raise GeneratedDataError(
            f'{out_dir} holds {n} file{"s" if n > 1 else ""} under '
            f'leftImg8bit/ and gtFine/ that the generator did not write '
            f'({why}; first: {others[0]}): generating into it would mix two '
            'data sets; delete them or choose another folder')
    for path in ours:
        if osp.exists(path):
            os.remove(path)
    for sub in SPLIT_DIRS:  # the emptied city folders
        for root, dirs, _ in os.walk(osp.join(out_dir, sub), topdown=False):
            for d in dirs:
                if not os.listdir(osp.join(root, d)):
                    os.rmdir(osp.join(root, d))
    if record is not None:
        os.remove(osp.join(out_dir, RECORD))


def is_generated(out_dir: str, num_train: int, num_val: int,
                 size: Optional[Tuple[int, int]] = None,
                 seed: Optional[int] = None) -> bool:
    """Whether ``out_dir`` holds the data set :func:`generate` writes for
    these arguments (``size`` and ``seed`` checked when given): its record
    says so and is complete, and the split folders hold its files and no
    others. A folder without the record (written before the generator kept
    one) counts when it has that many label images per split."""
    record = read_record(out_dir)
    if record is not None:
        wanted = dict(num_train=num_train, num_val=num_val, complete=True)
        if size is not None:
            wanted['size'] = list(size)
        if seed is not None:
            wanted['seed'] = seed
        if any(record.get(k) != v for k, v in wanted.items()):
            return False
        return set(_split_files(out_dir)) == _expected_files(
            out_dir, num_train, num_val)
    for split, count in zip(SPLITS, (num_train, num_val)):
        root = osp.join(out_dir, 'gtFine', split)
        found = sum(len(files) for _, _, files in os.walk(root)) \
            if osp.isdir(root) else 0
        if found != count:
            return False
    return True


def generate_with_progress(out_dir: str, num_train: int = 200,
                           num_val: int = 50,
                           size: Tuple[int, int] = DEFAULT_SIZE,
                           seed: int = 0) -> Dict[str, int]:
    """:func:`generate` with mmengine's progress bar on the terminal (and a
    line break after it), as the tools show it."""
    from mmengine.utils import ProgressBar
    bars = []  # made at the first image, after the arguments are checked

    def progress(done, total):
        if not bars:
            bars.append(ProgressBar(total))
        bars[0].update()

    counts = generate(out_dir, num_train, num_val, size, seed, progress)
    if bars:
        print()
    return counts
