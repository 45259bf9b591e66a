"""Count the multiply-adds a (selective) segmentor executes per image.

Stages 3-4 of a selective backbone are counted under the mask actually used
(DESIGN I4); dense parts with torch's FLOP counter. The dense OS8 and OS16
networks with the same backbone are printed as references.

Examples::

    # forced down-sampling ratios (random masks with that many OS16 cells)
    python tools/analysis_tools/get_flops.py CONFIG --shape 1024 2048 \
        --ds-ratio 0 0.25 0.5 0.75 1
    # the model's own masks on real images (each image at its own size;
    # the dense references at the same size)
    python tools/analysis_tools/get_flops.py CONFIG --checkpoint CKPT \
        --data-root data/cityscapes --num-images 50
"""
import argparse
import json
import logging

import torch
from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.utils import ProgressBar

import mmselds  # noqa: F401
from mmselds.analysis import is_selective, model_macs, reference_macs
from mmselds.datasets import NoImagesError
from mmselds.models.backbones import check_input_size
from mmselds.utils.arguments import (fraction, output_file, parent_made,
                                     positive_int)
from mmselds.utils.checkpoint import UNTRAINED
from mmselds.utils.evaluation import build_test_loader
from mmselds.utils.launch import run_cli
from mmselds.utils.model_io import build_segmentor

PARTS = [('stem_stages12', 'stem + stages 1-2'),
         ('stages34_full', 'stages 3-4 full resolution'),
         ('stages34_down', 'stages 3-4 down-sampled'),
         ('mask_head', 'mask head'), ('pooling', 'selective pooling'),
         ('backbone', 'backbone'), ('decode_head', 'decode head'),
         ('total', 'inference total (backbone + decode head)'),
         ('auxiliary_head', 'auxiliary head (training only, not in total)')]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description='Per-image multiply-adds of a selective segmentor')
    p.add_argument('config')
    p.add_argument('--shape', type=positive_int, nargs=2, metavar=('H', 'W'),
                   help='input size of the forced-ratio columns and the '
                   'dense references (default: with --data-root the '
                   'images\' own size, else 1024 2048)')
    p.add_argument('--checkpoint', help='weights (the mask head matters '
                   'with --data-root)')
    p.add_argument('--data-root', help='average over the first '
                   '--num-images test images through the model\'s own mask')
    p.add_argument('--num-images', type=positive_int, default=20)
    p.add_argument('--ds-ratio', type=fraction('a down-sampling ratio'),
                   nargs='+',
                   help='forced down-sampling ratios, each in [0, 1] '
                   '(default: 0 0.25 0.5 0.75 1 without --data-root)')
    p.add_argument('--out', type=output_file,
                   help='write the counts to this JSON file')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def average(dicts):
    """Key-wise mean of nested dicts of numbers."""
    out = {}
    for key, value in dicts[0].items():
        values = [d[key] for d in dicts]
        out[key] = average(values) if isinstance(value, dict) else \
            sum(values) / len(values)
    return out


def image_columns(model, cfg, data_root, num_images):
    """Per-image MACs on the first ``num_images`` test images of
    ``data_root``, each at its own (pre-processed) size, averaged: the
    model's own-mask column (selective models) or its dense count, the
    dense references at the same sizes, and the sizes."""
    try:
        loader = build_test_loader(cfg, data_root)
    except NoImagesError as error:
        raise SystemExit(f'error: --data-root: {error}') from None
    num_images = min(num_images, len(loader.dataset))
    counts, refs, sizes, ratios, cache = [], [], [], [], {}
    bar = ProgressBar(num_images)
    with torch.no_grad():
        for _, batch in zip(range(num_images), loader):
            inputs = model.data_preprocessor(batch, False)['inputs']
            size = tuple(inputs.shape[2:])
            if is_selective(model):
                model.backbone(inputs)
                ratios.append(model.backbone.last_ratio)
                counts.append(model_macs(model, size, [ratios[-1]]))
            else:
                counts.append(model_macs(model, size))
            if size not in cache:
                cache[size] = reference_macs(model, size)
            refs.append(cache[size])
            sizes.append(size)
            bar.update()
    print()
    if ratios:
        name = (f'own mask (s={sum(ratios) / len(ratios):.3f}, '
                f'{num_images} images)')
    else:
        name = f'dense ({num_images} images)'
    return name, average(counts), average(refs), sizes


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    model, cfg = build_segmentor(args.config, args.checkpoint,
                                 args.cfg_options)
    if args.shape and is_selective(model):
        try:  # the backbone's own check: an even OS8 map
            check_input_size(args.shape)
        except ValueError as error:
            parser.error(f'argument --shape: {error}')
    columns, column_refs = {}, {}
    image_refs = sizes = None
    if args.data_root:
        if is_selective(model) and not args.checkpoint:
            print_log('get_flops: no --checkpoint: the mask head keeps its '
                      f'random initialisation, {UNTRAINED}',
                      logger='current', level=logging.WARNING)
        name, counts, image_refs, sizes = image_columns(
            model, cfg, args.data_root, args.num_images)
        columns[name], column_refs[name] = counts, image_refs
    if args.shape:
        size = tuple(args.shape)
    elif sizes:  # the images' own (most common) size
        size = max(set(sizes), key=sizes.count)
    else:
        size = (1024, 2048)
    refs = reference_macs(model, size)
    if not is_selective(model) and not args.data_root:
        columns['dense'], column_refs['dense'] = model_macs(model, size), refs
    ratios = args.ds_ratio if args.ds_ratio is not None else (
        [] if args.data_root else [0, 0.25, 0.5, 0.75, 1])
    if is_selective(model):
        for s in ratios:
            columns[f's={s:g}'] = model_macs(model, size, [s])
            column_refs[f's={s:g}'] = refs
    if sizes:
        shown = sorted(set(sizes))
        image_sizes = ', '.join(f'{h}x{w}' for h, w in shown[:3]) + (
            ', ...' if len(shown) > 3 else '')
        print(f'\nmultiply-adds (GMACs) per image; image column: each image '
              f'at its own input size ({image_sizes})' + (
                  f', forced-ratio columns: {size[0]}x{size[1]}'
                  if len(columns) > 1 else ''))
    else:
        print(f'\nmultiply-adds (GMACs) per image, input {size[0]}x{size[1]}')
    width = max(max(len(c) for c in columns), 9) + 2
    print(f'{"":46}' + ''.join(f'{c:>{width}}' for c in columns))
    for key, name in PARTS:
        if any(key in col for col in columns.values()):
            print(f'{name:46}' + ''.join(
                f'{col[key] / 1e9:>{width}.3f}' if key in col else
                f'{"-":>{width}}' for col in columns.values()))
    print(f'{"backbone / dense OS8 backbone":46}' + ''.join(
        f'{col["backbone"] / column_refs[c]["OS8"]["backbone"]:>{width}.3f}'
        for c, col in columns.items()))
    print(f'{"total / dense OS8 total":46}' + ''.join(
        f'{col["total"] / column_refs[c]["OS8"]["total"]:>{width}.3f}'
        for c, col in columns.items()))
    print('(each column against the dense OS8 network at its own input '
          'size)')
    listed = [(f'{size[0]}x{size[1]}', refs)]
    if image_refs is not None and image_refs != refs:
        listed.append(('the images\' own sizes (mean per image)',
                       image_refs))
    for where, ref_set in listed:
        print(f'\ndense references with the same backbone and heads at '
              f'{where} (mmseg ResNetV1c):')
        for name, ref in ref_set.items():
            print(f'  {name:5} backbone {ref["backbone"] / 1e9:9.3f}   '
                  f'decode head {ref["decode_head"] / 1e9:9.3f}   total '
                  f'{ref["total"] / 1e9:9.3f}')
    print('\nCounted: multiply-adds of convolutions and matmuls (adaptive '
          'and average pooling: 4 per pooled value); BatchNorm, ReLU, '
          'additions and resizing are not counted.')
    if args.out:
        out = dict(config=args.config, shape=size, columns=columns,
                   references=refs)
        if image_refs is not None:
            out.update(image_sizes=sorted(set(sizes)),
                       image_references=image_refs)
        with open(parent_made(args.out), 'w') as f:
            json.dump(out, f, indent=2)


if __name__ == '__main__':
    run_cli(main)
