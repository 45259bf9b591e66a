"""Generate the synthetic Cityscapes-layout data set used by the demo.

Example::

    python tools/dataset_converters/synthetic_cityscapes.py \
        data/synthetic_cityscapes --num-train 200 --num-val 50 --size 256 512
"""
import argparse

from mmengine.utils import ProgressBar

from mmselds.datasets import generate


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('out_dir', help='data root to write')
    p.add_argument('--num-train', type=int, default=200)
    p.add_argument('--num-val', type=int, default=50)
    p.add_argument('--size', type=int, nargs=2, default=(256, 512),
                   metavar=('H', 'W'))
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    bar = ProgressBar(args.num_train + args.num_val)
    counts = generate(args.out_dir, args.num_train, args.num_val,
                      tuple(args.size), args.seed,
                      progress=lambda done, total: bar.update())
    print(f'\nwrote {counts} images of {args.size[0]}x{args.size[1]} to '
          f'{args.out_dir}')


if __name__ == '__main__':
    main()
