"""Count the multiply-adds a (selective) segmentor executes per image.

Stages 3-4 of a selective backbone are counted under the mask actually used
(DESIGN I4); dense parts with torch's FLOP counter. The dense OS8 and OS16
networks with the same backbone are printed as references.

Examples::

    # forced down-sampling ratios (random masks with that many OS16 cells)
    python tools/analysis_tools/get_flops.py CONFIG --shape 1024 2048 \
        --ds-ratio 0 0.25 0.5 0.75 1
    # the model's own masks on real images
    python tools/analysis_tools/get_flops.py CONFIG --checkpoint CKPT \
        --data-root data/cityscapes --num-images 50
"""
import argparse
import json

import torch
from mmengine.config import DictAction
from mmengine.runner import Runner
from mmengine.utils import ProgressBar

import mmselds  # noqa: F401
from mmselds.analysis import is_selective, model_macs, reference_macs
from mmselds.utils.model_io import build_segmentor

PARTS = [('stem_stages12', 'stem + stages 1-2'),
         ('stages34_full', 'stages 3-4 full resolution'),
         ('stages34_down', 'stages 3-4 down-sampled'),
         ('mask_head', 'mask head'), ('pooling', 'selective pooling'),
         ('backbone', 'backbone'), ('decode_head', 'decode head'),
         ('total', 'inference total (backbone + decode head)'),
         ('auxiliary_head', 'auxiliary head (training only, not in total)')]


def parse_args():
    p = argparse.ArgumentParser(
        description='Per-image multiply-adds of a selective segmentor')
    p.add_argument('config')
    p.add_argument('--shape', type=int, nargs=2, default=(1024, 2048),
                   metavar=('H', 'W'), help='input size (forced ratios)')
    p.add_argument('--checkpoint', help='weights (the mask head matters '
                   'with --data-root)')
    p.add_argument('--data-root', help='average over the first '
                   '--num-images test images through the model\'s own mask')
    p.add_argument('--num-images', type=int, default=20)
    p.add_argument('--ds-ratio', type=float, nargs='+',
                   help='forced down-sampling ratios (default: 0 0.25 0.5 '
                   '0.75 1 without --data-root)')
    p.add_argument('--out', help='write the counts to this JSON file')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args()


def own_mask_columns(model, cfg, data_root, num_images):
    """Per-image MACs through the model's own masks, averaged."""
    loader_cfg = cfg.test_dataloader
    loader_cfg.dataset.data_root = data_root
    loader_cfg.batch_size, loader_cfg.num_workers = 1, 0
    loader_cfg.persistent_workers = False
    loader = Runner.build_dataloader(loader_cfg)
    num_images = min(num_images, len(loader.dataset))
    sums, ratios = {}, []
    bar = ProgressBar(num_images)
    with torch.no_grad():
        for _, batch in zip(range(num_images), loader):
            inputs = model.data_preprocessor(batch, False)['inputs']
            model.backbone(inputs)
            ratio = model.backbone.last_ratio
            ratios.append(ratio)
            for k, v in model_macs(model, inputs.shape[2:], [ratio]).items():
                sums[k] = sums.get(k, 0) + v
            bar.update()
    print()
    mean_ratio = sum(ratios) / len(ratios)
    return {f'own mask (s={mean_ratio:.3f}, {num_images} images)':
            {k: v / num_images for k, v in sums.items()}}


def main():
    args = parse_args()
    model, cfg = build_segmentor(args.config, args.checkpoint,
                                 args.cfg_options)
    size = tuple(args.shape)
    columns = {}
    if not is_selective(model):
        columns['dense'] = model_macs(model, size)
    elif args.data_root:
        columns.update(own_mask_columns(model, cfg, args.data_root,
                                        args.num_images))
    ratios = args.ds_ratio if args.ds_ratio is not None else (
        [] if args.data_root else [0, 0.25, 0.5, 0.75, 1])
    if is_selective(model):
        for s in ratios:
            columns[f's={s:g}'] = model_macs(model, size, [s])
    refs = reference_macs(model, size)
    print(f'\nmultiply-adds (GMACs) per image, input {size[0]}x{size[1]} '
          '(own-mask columns: each image at its own size)')
    width = max(max(len(c) for c in columns), 9) + 2
    print(f'{"":46}' + ''.join(f'{c:>{width}}' for c in columns))
    for key, name in PARTS:
        if any(key in col for col in columns.values()):
            print(f'{name:46}' + ''.join(
                f'{col[key] / 1e9:>{width}.3f}' if key in col else
                f'{"-":>{width}}' for col in columns.values()))
    os8 = refs['OS8']
    print(f'{"backbone / dense OS8 backbone":46}' + ''.join(
        f'{col["backbone"] / os8["backbone"]:>{width}.3f}'
        for col in columns.values()))
    print(f'{"total / dense OS8 total":46}' + ''.join(
        f'{col["total"] / os8["total"]:>{width}.3f}'
        for col in columns.values()))
    print(f'\ndense references with the same backbone and heads at '
          f'{size[0]}x{size[1]} (mmseg ResNetV1c):')
    for name, ref in refs.items():
        print(f'  {name:5} backbone {ref["backbone"] / 1e9:9.3f}   decode '
              f'head {ref["decode_head"] / 1e9:9.3f}   total '
              f'{ref["total"] / 1e9:9.3f}')
    print('\nCounted: multiply-adds of convolutions and matmuls (adaptive '
          'and average pooling: 4 per pooled value); BatchNorm, ReLU, '
          'additions and resizing are not counted.')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(config=args.config, shape=size, columns=columns,
                           references=refs), f, indent=2)


if __name__ == '__main__':
    main()
