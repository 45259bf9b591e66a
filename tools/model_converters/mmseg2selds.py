"""Convert an mmseg DeepLabV3 checkpoint, or a plain ``ResNetV1c``
backbone checkpoint (e.g. ``open-mmlab://resnet101_v1c``), into a
checkpoint of a selective down-sampling model.

``SelDSResNetV1c`` has the parameter names of mmseg's ``ResNetV1c``, so
the tensors are copied by name; a bare backbone's names get ``backbone.``
in front. The only tensors the source may lack are the ones new in the
selective model (the mask head and selective pooling, the prefixes of
``mmselds.utils.checkpoint.ALLOWED_MISSING`` that ``CheckLoadFromHook``
also accepts; for a bare backbone also the decode and auxiliary heads):
they take the config's initialisation and are listed by name. Any other
missing tensor (another depth, a missing stage, a misspelt prefix), a
tensor of the source the model has no place for (unexpected) or a tensor
whose shape differs from the model's is an error: one ``error: ...`` line
with the counts and the first names, exit status 1, no output file.
``--no-strict-load`` converts what fits instead, with a warning: the
model's tensors the source does not fill keep the config's
initialisation, the others are dropped, both listed by name. The result is
an mmengine checkpoint (``meta`` + ``state_dict``) that loads strictly
into a model built from CONFIG.

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
from mmselds.utils.checkpoint import (ALLOWED_MISSING, CheckpointMismatchError,
                                      compare_state_dicts, module_prefixes,
                                      read_checkpoint, state_dict_of)
from mmselds.utils.evaluation import quiet_logger
from mmselds.utils.launch import run_cli
from mmselds.utils.model_io import build_segmentor

# first-level names of mmseg's ResNetV1c (deep stem, layers)
BACKBONE_ROOTS = ('stem.', 'conv1.', 'bn1.', 'norm1.', 'layer')
# what a bare backbone cannot have besides ALLOWED_MISSING: the heads
HEADS = ('decode_head.', 'auxiliary_head.')


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
    parser.add_argument(
        '--no-strict-load', action='store_true',
        help='convert what fits when the checkpoint does not fit the model '
        '(missing tensors besides the mask head and pooling, unexpected '
        'tensors, other shapes): warn, keep the config\'s initialisation '
        'for what the checkpoint does not fill and drop the rest (default: '
        'such a checkpoint is an error)')
    return parser.parse_args(argv)


# the end of the hint for a config or an image given as SRC
USAGE = ('mmseg2selds.py takes SRC CONFIG DST: the mmseg checkpoint, then '
         'the selective config, then the output')
# an ImageNet classifier a bare backbone may carry: dropped, not an error
CLASSIFIER = ('fc.', )


def is_bare_backbone(state: dict) -> bool:
    """Names of a backbone alone: no ``backbone.`` and ResNet's roots (and
    perhaps its ImageNet classifier ``fc.*``)."""
    return not any(k.startswith('backbone.') for k in state) and all(
        k.startswith(BACKBONE_ROOTS + CLASSIFIER) for k in state)


def convert(src: str, config: str, dst: str, cfg_options=None,
            strict: bool = True) -> dict:
    """Write the converted checkpoint; returns what was done (lists of
    names, and ``diff``, the comparison with the model).

    Raises:
        CheckpointMismatchError (a ``ValueError``): with ``strict``, the
            source lacks a tensor that is not new in the selective model,
            has one the model has no place for, or one of another shape;
            the message gives the counts and the first names. Nothing is
            written.
        ValueError: a file that is not a checkpoint, or a config that does
            not build a selective model.
    """
    state = state_dict_of(read_checkpoint(src, usage=USAGE), src)
    bare = is_bare_backbone(state)
    classifier = []
    if bare:
        classifier = [k for k in state if k.startswith(CLASSIFIER)]
        state = OrderedDict((f'backbone.{k}', v) for k, v in state.items()
                            if not k.startswith(CLASSIFIER))
    model, cfg = build_segmentor(config, cfg_options=cfg_options)
    if not hasattr(model.backbone, 'mask_head'):
        raise ValueError(f'{config} does not build a selective model '
                         f'(backbone {type(model.backbone).__name__})')
    with quiet_logger():  # mmengine logs a line per parameter
        model.init_weights()  # the heads' own initialisation
    own = model.state_dict()
    allowed = ALLOWED_MISSING + (HEADS if bare else ())
    diff = compare_state_dicts(state, own, allowed)
    if strict and not diff.ok:
        raise CheckpointMismatchError(
            f'{src} does not fit {config}: {diff.describe()} (to convert '
            'what fits anyway, pass --no-strict-load)')
    mismatched = [k for k, _, _ in diff.mismatched]
    skip = set(mismatched)
    fits = [k for k in own if k in state and k not in skip]
    out = OrderedDict(
        (k, (state[k] if k in state and k not in skip else v)
         .detach().cpu().clone()) for k, v in own.items())
    filled = diff.allowed_missing + diff.missing + mismatched
    meta = dict(converted_from=osp.basename(src), cfg=cfg.pretty_text,
                bare_backbone=bare, initialised=list(filled),
                dropped=list(diff.unexpected) + classifier,
                mmselds_version=mmselds.__version__)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(meta=meta, state_dict=out), dst)
    return dict(bare=bare, copied=fits, initialised=filled,
                dropped=list(diff.unexpected) + classifier, diff=diff)


def main(argv=None):
    args = parse_args(argv)
    try:
        done = convert(args.src, args.config, args.dst, args.cfg_options,
                       strict=not args.no_strict_load)
    except ValueError as err:
        sys.exit(f'error: {err}')
    if done['bare']:
        print(f'{args.src}: a bare backbone, names mapped to backbone.*')
    if not done['diff'].ok:
        print(f'warning: {args.src} does not fit {args.config}: '
              f'{done["diff"].describe()} (--no-strict-load: converted what '
              'fits; the tensors the source does not fill keep the config\'s '
              'initialisation, the others are dropped, all listed below)',
              file=sys.stderr)
    print(f'copied {len(done["copied"])} tensors')
    # by module; each key too when the source did not fit (those matter)
    listed = not done['diff'].ok
    if done['initialised']:  # none: a source with every tensor
        print(f'{len(done["initialised"])} tensors not in the source (or of '
              'another shape) keep the config\'s initialisation (missing '
              f'keys): {module_prefixes(done["initialised"], counts=True)}')
        for k in done['initialised'] if listed else ():
            print(f'  {k}')
    if done['dropped']:
        print(f'{len(done["dropped"])} tensors of the source have no place '
              'in the model and are dropped (unexpected keys): '
              f'{module_prefixes(done["dropped"], counts=True)}')
        for k in done['dropped'] if listed else ():
            print(f'  {k}')
    else:
        print('no tensor of the source is dropped')
    print(f'wrote {args.dst}')
    return done


if __name__ == '__main__':
    run_cli(main)
