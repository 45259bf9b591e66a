"""Generate the synthetic Cityscapes-layout data set used by the demo.

The defaults are the demo's data set (what ``tools/demo.py`` and the README
use): 200 train + 50 val images of 128x256 (H x W), seed 0. A data set this
tool wrote into the folder before is replaced (its record,
``synthetic_cityscapes.json``, says what is there); images it did not
write are never touched: that is an error.

Example::

    python tools/dataset_converters/synthetic_cityscapes.py \
        data/synthetic_cityscapes --num-train 200 --num-val 50 --size 128 256
"""
import argparse
import sys

from mmselds.datasets import generate_with_progress
from mmselds.datasets.synthetic_cityscapes import DEFAULT_SIZE
from mmselds.utils.arguments import int_at_least, non_negative_int


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('out_dir', help='data root to write')
    p.add_argument('--num-train', type=non_negative_int, default=200,
                   help='training images (leftImg8bit/train)')
    p.add_argument('--num-val', type=non_negative_int, default=50,
                   help='validation images (leftImg8bit/val)')
    p.add_argument('--size', type=int_at_least(32), nargs=2,
                   default=DEFAULT_SIZE, metavar=('H', 'W'),
                   help='image height and width (at least 32x32)')
    p.add_argument('--seed', type=int, default=0,
                   help='base seed (same arguments, same images)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        counts = generate_with_progress(args.out_dir, args.num_train,
                                        args.num_val, tuple(args.size),
                                        args.seed)
    except (OSError, ValueError) as err:  # GeneratedDataError is an OSError
        sys.exit(f'error: {err}')
    print(f'wrote {counts} images of {args.size[0]}x{args.size[1]} to '
          f'{args.out_dir}')


if __name__ == '__main__':
    main()
