"""The letter's Table 1 as a command: mask-head cost of the CAD baseline vs
the depthwise-separable head (Prop. 1) and with adaptive pooling (Prop. 2).

Counts multiply-adds on the stage-2 map of DeepLabV3-R101-D8 (512 channels,
OS8) for a 1024x2048 input by default; ``--config`` counts the mask head
that config builds (type, widths, norm) next to the letter's two heads on
its map. The letter's column is for 1024x2048: with another ``--shape`` it
is scaled by the pixel count (marked ``letter*``). The adaptive pooling's
cost depends on the mask (it pools the full-resolution cells that
down-sampled neighbours read), so it is given at the down-sampling ratios
asked for.

Example::

    python tools/analysis_tools/mask_head_flops.py --shape 1024 2048
    # a config's own head, e.g. a demo config at its 128x256 input
    python tools/analysis_tools/mask_head_flops.py --shape 128 256 \
        --config CONFIG
"""
import argparse
import os.path as osp

from mmseg.registry import MODELS

import mmselds  # noqa: F401
from mmselds.analysis import selective_stage_macs
from mmselds.models import CADMaskHead, DepthwiseMaskHead, mask_head_macs
from mmselds.models.backbones import check_input_size
from mmselds.utils.arguments import fraction, positive_int, summary
from mmselds.utils.config import read_config
from mmselds.utils.launch import run_cli

# the repository root (this file is tools/analysis_tools/mask_head_flops.py)
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'selds', 'deeplabv3-selds-prop2_r101-d8_'
                  '4xb2-80k_cityscapes-512x1024.py')
# the letter's Table 1: DeepLabV3-R101-D8 (512-channel stage-2 map) at
# 1024x2048
LETTER = dict(cad=690e6, prop1=130e6, prop2=140e6)
LETTER_SHAPE = (1024, 2048)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=summary(__doc__),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--shape', type=positive_int, nargs=2,
                   default=LETTER_SHAPE,
                   metavar=('H', 'W'), help='input size')
    p.add_argument('--config', default=CONFIG,
                   help='the config whose mask head (and adaptive pooling, '
                   'for the Prop. 2 rows) is counted')
    p.add_argument('--ds-ratio', type=fraction('a down-sampling ratio'),
                   nargs='+',
                   default=(0.25, 0.5, 0.75),
                   help='down-sampling ratios of the Prop. 2 rows, each in '
                   '[0, 1]')
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def describe(head) -> str:
    """``Type(in_channels; hidden widths, norm)`` of a built mask head."""
    convs = [m for m in head.modules() if m.__class__.__name__ == 'Conv2d'
             and m.groups == 1]
    widths = ', '.join(str(m.out_channels) for m in convs[:-1][:2])
    norms = sorted({m.__class__.__name__ for m in head.modules()
                    if 'Norm' in m.__class__.__name__})
    norm = '+'.join(norms) if norms else 'no norm'
    return f'{type(head).__name__}({head.in_channels}; {widths}; {norm})'


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # the backbone's own check: an even OS8 map, which it returns
        h, w = check_input_size(args.shape)
    except ValueError as error:
        parser.error(f'argument --shape: {error}')
    cfg = read_config(args.config)
    cfg.model.backbone.pop('init_cfg', None)
    backbone = MODELS.build(cfg.model.backbone)
    if not hasattr(backbone, 'mask_head'):
        raise SystemExit(f'error: {args.config} has no selective '
                         'down-sampling backbone (no mask head to count)')
    head = backbone.mask_head
    channels = head.in_channels
    # the letter's two heads (default widths 128, 64) on this config's map
    cad_head, light_head = CADMaskHead(channels), DepthwiseMaskHead(channels)
    cad = mask_head_macs(cad_head, h, w)
    light = mask_head_macs(light_head, h, w)
    own = mask_head_macs(head, h, w)
    cells = h * w // 4
    scale = args.shape[0] * args.shape[1] / (LETTER_SHAPE[0] *
                                             LETTER_SHAPE[1])
    letter_title = 'letter' if scale == 1 else 'letter*'
    print(f'mask-head multiply-adds on the {channels}x{h}x{w} stage-2 map of '
          f'a {args.shape[0]}x{args.shape[1]} input ({backbone.depth}-layer '
          f'backbone, {osp.basename(args.config)})\n')
    rows = [(f'Baseline (CAD): {describe(cad_head)}', cad, LETTER['cad']),
            (f'Prop. 1: {describe(light_head)}', light, LETTER['prop1']),
            (f'this config: {describe(head)}', own, None)]
    if backbone.pool_mode == 'adaptive':
        for s in args.ds_ratio:
            pool = selective_stage_macs(backbone, (h, w),
                                        round(s * cells)).pooling
            rows.append((f'Prop. 2: this config\'s head + adaptive pooling '
                         f'(s = {s:g})', own + pool, LETTER['prop2']))
    width = max(len(name) for name, _, _ in rows) + 2
    print(f'{"row":{width}}{"MACs":>12}{"vs CAD":>10}{letter_title:>10}')
    for name, macs, letter in rows:
        vs = '' if macs == cad else f'{macs / cad - 1:.1%}'
        ref = '' if letter is None else f'{letter * scale / 1e6:.3g}M'
        print(f'{name:{width}}{macs / 1e6:>11.2f}M{vs:>10}{ref:>10}')
    if backbone.pool_mode != 'adaptive':
        print(f'(no Prop. 2 rows: {osp.basename(args.config)} pools with '
              f'{backbone.pool_mode!r}, not adaptive pooling)')
    print(f'\nletter: -81% (690M -> 130M). Ours: {1 - light / cad:.1%} fewer '
          'multiply-adds for the depthwise head. The CAD and Prop. 1 rows '
          'are the letter\'s heads (hidden widths 128, 64) on this config\'s '
          'stage-2 map; "this config" is the head the config builds.')
    if scale != 1:
        print(f'letter*: the letter\'s numbers are for a '
              f'{LETTER_SHAPE[0]}x{LETTER_SHAPE[1]} input; scaled here by '
              f'the pixel count, x{scale:g} = {args.shape[0]}x'
              f'{args.shape[1]} / {LETTER_SHAPE[0]}x{LETTER_SHAPE[1]} '
              '(mask-head cost is linear in it).')
    if channels != 512:
        print(f'The letter\'s heads read a 512-channel map (R101); this '
              f'config\'s has {channels}, so the letter column is not '
              'directly comparable.')
    print('See docs/flops.md for how these are counted and why the absolute '
          'numbers differ.')


if __name__ == '__main__':
    run_cli(main)
