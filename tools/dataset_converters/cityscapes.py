"""Convert Cityscapes annotations to the train-id label images mmseg reads.

mmseg's converter (same arguments and outputs), with named errors for a
missing ``cityscapesscripts``, a wrong folder, an unknown label, a polygon
of fewer than 2 points, annotations without their image or of another
size than their image (down-sampled images), all before any label image
is written. Needs ``pip install cityscapesscripts``.

Example (``data/cityscapes`` holding ``gtFine/`` and ``leftImg8bit/``)::

    python tools/dataset_converters/cityscapes.py data/cityscapes --nproc 8
"""
import argparse
import sys

from mmselds.datasets.cityscapes import (CityscapesConversionError,
                                         convert_cityscapes)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('cityscapes_path', help='Cityscapes root')
    p.add_argument('--gt-dir', default='gtFine',
                   help='annotation folder under the root (gtFine, or '
                   'gtCoarse: then set seg_map_suffix='
                   '\'_gtCoarse_labelTrainIds.png\' in the data set config)')
    p.add_argument('-o', '--out-dir',
                   help='where train.txt / val.txt / test.txt go; None: '
                   'the root')
    p.add_argument('--nproc', default=1, type=int,
                   help='worker processes')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        counts = convert_cityscapes(args.cityscapes_path, args.gt_dir,
                                    args.out_dir, args.nproc)
    except (CityscapesConversionError, ValueError) as e:
        sys.exit(f'error: {e}')
    print('label images written: ' + ', '.join(
        f'{split} {n}' for split, n in counts.items()))


if __name__ == '__main__':
    main()
