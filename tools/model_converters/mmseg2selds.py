"""Convert an mmseg DeepLabV3 checkpoint, or a plain ``ResNetV1c``
backbone checkpoint (e.g. ``open-mmlab://resnet101_v1c``), into a
checkpoint of a selective down-sampling model.

``SelDSResNetV1c`` has the parameter names of mmseg's ``ResNetV1c``, so
the tensors are copied by name; a bare backbone's names get ``backbone.``
in front. Tensors of the model that the source lacks (the mask head and
selective pooling; for a bare backbone also the heads) take the config's
initialisation and are listed by name, as are the source's tensors the
model has no place for (dropped). A tensor whose shape differs from the
model's is refused, naming it and both shapes. The result is an mmengine
checkpoint (``meta`` + ``state_dict``) that loads strictly into a model
built from CONFIG.

Example::

    python tools/model_converters/mmseg2selds.py \\
        deeplabv3_r101-d8_512x1024_80k_cityscapes.pth \\
        configs/selds/deeplabv3-selds-prop2_r101-d8_4xb2-80k_\\
cityscapes-512x1024.py selds.pth
"""
import argparse
import os
import os.path as osp
import sys
from collections import OrderedDict

import torch
from mmengine.config import DictAction

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run from any directory without installing

import mmselds
from mmselds.utils.checkpoint import (ALLOWED_MISSING, compare_state_dicts,
                                      read_checkpoint, state_dict_of)
from mmselds.utils.model_io import build_segmentor

# first-level names of mmseg's ResNetV1c (deep stem, layers)
BACKBONE_ROOTS = ('stem.', 'conv1.', 'bn1.', 'norm1.', 'layer')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an mmseg DeepLabV3 or ResNetV1c checkpoint to '
        'a selective down-sampling model')
    parser.add_argument('src', help='mmseg checkpoint (DeepLabV3 or a bare '
                        'ResNetV1c backbone)')
    parser.add_argument('config', help='the selective config to convert to')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value pairs')
    return parser.parse_args(argv)


def is_bare_backbone(state: dict) -> bool:
    """Names of a backbone alone: no ``backbone.`` and ResNet's roots."""
    return not any(k.startswith('backbone.') for k in state) and all(
        k.startswith(BACKBONE_ROOTS) for k in state)


def convert(src: str, config: str, dst: str, cfg_options=None) -> dict:
    """Write the converted checkpoint; returns what was done (lists of
    names). Raises ``ValueError`` on a shape mismatch or a bad file."""
    state = state_dict_of(read_checkpoint(src), src)
    bare = is_bare_backbone(state)
    if bare:
        state = OrderedDict((f'backbone.{k}', v) for k, v in state.items())
    model, cfg = build_segmentor(config, cfg_options=cfg_options)
    if not hasattr(model.backbone, 'mask_head'):
        raise ValueError(f'{config} does not build a selective model '
                         f'(backbone {type(model.backbone).__name__})')
    model.init_weights()  # the heads' own initialisation
    own = model.state_dict()
    diff = compare_state_dicts(state, own, ALLOWED_MISSING)
    if diff.mismatched:
        raise ValueError(f'{src} does not fit {config}: ' + '; '.join(
            f'{k}: checkpoint {tuple(a)}, model {tuple(b)}'
            for k, a, b in diff.mismatched[:10]) + (
                f'; ... ({len(diff.mismatched) - 10} more)'
                if len(diff.mismatched) > 10 else ''))
    filled = diff.allowed_missing + diff.missing
    out = OrderedDict(
        (k, (state[k] if k in state else v).detach().cpu().clone())
        for k, v in own.items())
    meta = dict(converted_from=osp.basename(src), cfg=cfg.pretty_text,
                bare_backbone=bare, initialised=list(filled),
                dropped=list(diff.unexpected),
                mmselds_version=mmselds.__version__)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(meta=meta, state_dict=out), dst)
    return dict(bare=bare, copied=[k for k in own if k in state],
                initialised=filled, dropped=diff.unexpected)


def main(argv=None):
    args = parse_args(argv)
    try:
        done = convert(args.src, args.config, args.dst, args.cfg_options)
    except ValueError as err:
        sys.exit(f'error: {err}')
    if done['bare']:
        print(f'{args.src}: a bare backbone, names mapped to backbone.*')
    print(f'copied {len(done["copied"])} tensors')
    print(f'{len(done["initialised"])} tensors not in the source keep the '
          'config\'s initialisation (missing keys):')
    for k in done['initialised']:
        print(f'  {k}')
    print(f'{len(done["dropped"])} tensors of the source have no place in '
          'the model and are dropped (unexpected keys):')
    for k in done['dropped']:
        print(f'  {k}')
    print(f'wrote {args.dst}')
    return done


if __name__ == '__main__':
    main()
