"""The letter's Table 1 as a command: mask-head cost of the CAD baseline vs
the depthwise-separable head (Prop. 1) and with adaptive pooling (Prop. 2).

Counts multiply-adds on the stage-2 map of DeepLabV3-R101-D8 (512 channels,
OS8) for a 1024x2048 input by default. The adaptive pooling's cost depends
on the mask (it pools the full-resolution cells that down-sampled
neighbours read), so it is given at the down-sampling ratios asked for.

Example::

    python tools/analysis_tools/mask_head_flops.py --shape 1024 2048
"""
import argparse

from mmengine.config import Config
from mmseg.registry import MODELS

import mmselds  # noqa: F401
from mmselds.analysis import selective_stage_macs
from mmselds.models import CADMaskHead, DepthwiseMaskHead, mask_head_macs

CONFIG = 'configs/selds/deeplabv3-selds-prop2_r101-d8_4xb2-80k_' \
    'cityscapes-512x1024.py'
LETTER = dict(cad=690e6, prop1=130e6, prop2=140e6)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--shape', type=int, nargs=2, default=(1024, 2048),
                   metavar=('H', 'W'), help='input size')
    p.add_argument('--config', default=CONFIG,
                   help='a config with adaptive pooling (for its sites)')
    p.add_argument('--ds-ratio', type=float, nargs='+',
                   default=(0.25, 0.5, 0.75))
    return p.parse_args()


def main():
    args = parse_args()
    h, w = args.shape[0] // 8, args.shape[1] // 8
    cfg = Config.fromfile(args.config)
    cfg.model.backbone.pop('init_cfg', None)
    backbone = MODELS.build(cfg.model.backbone)
    if backbone.pool_mode != 'adaptive':
        raise SystemExit(f'{args.config} does not use adaptive pooling')
    channels = backbone.mask_head.in_channels
    cad = mask_head_macs(CADMaskHead(channels), h, w)
    light = mask_head_macs(DepthwiseMaskHead(channels), h, w)
    cells = h * w // 4
    print(f'mask-head multiply-adds on the {channels}x{h}x{w} stage-2 map of '
          f'a {args.shape[0]}x{args.shape[1]} input ({backbone.depth}-layer '
          'backbone)\n')
    print(f'{"row":44}{"MACs":>12}{"vs CAD":>10}{"letter":>10}')
    print(f'{"Baseline (CAD): CADMaskHead":44}{cad / 1e6:>11.1f}M'
          f'{"":>10}{LETTER["cad"] / 1e6:>9.0f}M')
    print(f'{"Prop. 1: DepthwiseMaskHead":44}{light / 1e6:>11.1f}M'
          f'{light / cad - 1:>10.1%}{LETTER["prop1"] / 1e6:>9.0f}M')
    for s in args.ds_ratio:
        pool = selective_stage_macs(backbone, (h, w),
                                    round(s * cells)).pooling
        total = light + pool
        print(f'{f"Prop. 2: + adaptive pooling (s = {s:g})":44}'
              f'{total / 1e6:>11.1f}M{total / cad - 1:>10.1%}'
              f'{LETTER["prop2"] / 1e6:>9.0f}M')
    print(f'\nletter: -81% (690M -> 130M). Ours: {1 - light / cad:.1%} fewer '
          'multiply-adds for the depthwise head. See docs/flops.md for how '
          'these are counted and why the absolute numbers differ.')


if __name__ == '__main__':
    main()
