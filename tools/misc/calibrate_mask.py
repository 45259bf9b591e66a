"""Calibrate the test-time mask threshold of a selective checkpoint.

A checkpoint needs no calibration to test right: by default its mask head
down-samples, image by image, the fraction of cells training did. This tool
sets a global threshold on P(down-sample) instead, found on training images
(through the test pipeline) so that they down-sample ``--ratio`` of their
cells, or the ratio training reached (the checkpoint's
``backbone.mask_head.trained_ratio``) without ``--ratio``. The threshold is
stored in the new checkpoint (``backbone.mask_head.calibrated_threshold``
and ``meta['mask_calibration']``); ``tools/test.py`` uses it with no extra
option, and ``--cfg-options model.backbone.mask_head.threshold=T`` still
overrides it. ``--clear`` removes a calibration.

Example::

    python tools/misc/calibrate_mask.py CONFIG CKPT --ratio 0.6 --out new.pth
"""
import argparse
import math
import os.path as osp
import sys

import torch
from mmengine.config import DictAction
from mmengine.utils import ProgressBar

import mmselds  # noqa: F401  (registers modules; resolves mmseg:: bases)
from mmselds.analysis.calibration import (CALIBRATION_KEY,
                                          build_calibration_loader,
                                          mask_probabilities,
                                          threshold_for_ratio)
from mmselds.utils.arguments import output_file, parent_made
from mmselds.utils.checkpoint import load_model_checkpoint
from mmselds.utils.launch import run_cli
from mmselds.utils.model_io import build_segmentor


def parse_args():
    p = argparse.ArgumentParser(
        description='Calibrate the mask threshold of a selective checkpoint '
        'on training images',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('config', help='the config the checkpoint was trained with')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--out', required=True, default=argparse.SUPPRESS,
                   type=output_file,
                   help='the calibrated checkpoint (required)')
    p.add_argument('--ratio', type=float,
                   help='down-sampling ratio to calibrate to, in [0, 1]; '
                   'None: the ratio training reached')
    p.add_argument('--num-images', type=int, default=100,
                   help='training images to calibrate on (0: all)')
    p.add_argument('--clear', action='store_true',
                   help='remove a calibration instead: evaluation goes back '
                   'to the trained-ratio rule')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings of the config, e.g. '
                   'train_dataloader.dataset.data_root=DIR')
    args = p.parse_args()
    if args.ratio is not None and not 0 <= args.ratio <= 1:
        p.error(f'--ratio must be in [0, 1], got {args.ratio}')
    if args.num_images < 0:
        p.error(f'--num-images must be >= 0, got {args.num_images}')
    if osp.abspath(args.out) == osp.abspath(args.checkpoint):
        p.error('--out must not overwrite the input checkpoint')
    return args


def main():
    args = parse_args()
    model, cfg = build_segmentor(args.config, cfg_options=args.cfg_options)
    if not hasattr(model.backbone, 'mask_head'):
        sys.exit(f'error: {args.config} does not build a selective model '
                 f'(backbone {type(model.backbone).__name__})')
    # a clear error for a bad file or one that does not fit the config
    ckpt = load_model_checkpoint(model, args.checkpoint)
    if 'state_dict' not in ckpt:
        ckpt = dict(state_dict=ckpt)
    state = ckpt['state_dict']
    meta = ckpt.setdefault('meta', {})
    if args.clear:
        state[CALIBRATION_KEY] = torch.tensor(float('nan'))
        meta.pop('mask_calibration', None)
        torch.save(ckpt, parent_made(args.out))
        print(f'removed the calibration: {args.out} uses the trained-ratio '
              'rule')
        return

    head = model.backbone.mask_head
    trained = float(head.trained_ratio)
    loader = build_calibration_loader(cfg, args.num_images or None)
    print(f'P(down-sample) of the cells of {len(loader.dataset)} training '
          'images (test pipeline):')
    bar = ProgressBar(len(loader.dataset))
    probs = mask_probabilities(model, loader, on_batch=bar.update)
    print()
    if args.ratio is not None:
        target, source = args.ratio, '--ratio'
    elif not math.isnan(trained):
        target, source = trained, 'trained_ratio'
    else:  # a checkpoint written before trained_ratio was kept
        target, source = float(probs.mean()), 'mean P on training images'
    threshold = threshold_for_ratio(probs, target)
    reached = float((probs > threshold).double().mean())
    state[CALIBRATION_KEY] = torch.tensor(threshold)
    meta['mask_calibration'] = dict(
        threshold=threshold, target_ratio=target, source=source,
        ratio_on_calibration_images=reached, images=len(loader.dataset),
        trained_ratio=None if math.isnan(trained) else trained)
    torch.save(ckpt, parent_made(args.out))
    print(f'threshold {threshold:.6g} down-samples {reached:.4f} of the '
          f'cells (target {target:.4f} from {source}); wrote {args.out}')


if __name__ == '__main__':
    run_cli(main)
