"""Prepare a trained checkpoint for release (mmseg's ``publish_model.py``).

Keeps ``state_dict`` and ``meta`` only (optimizer, param_schedulers,
message_hub and the rest are dropped); ``meta`` keeps the config text,
gains the mmselds / mmseg / mmengine / torch versions and the mask
calibration (``meta['mask_calibration']``: the floats of
``backbone.mask_head.trained_ratio`` and
``backbone.mask_head.calibrated_threshold``, None where NaN, i.e. none),
and holds plain Python types only, so that the file loads with
``torch.load(path, weights_only=True)``. The file is then renamed
``{OUT stem}-{first 8 hex digits of its sha256}.pth``; its bytes, and so
the hash, do not depend on OUT.

Example::

    python tools/misc/publish_model.py work_dirs/x/iter_80000.pth \\
        deeplabv3-selds-prop2_r101-d8_4xb2-80k_cityscapes-512x1024.pth
"""
import argparse
import hashlib
import io
import math
import os
import os.path as osp
import sys
from collections import OrderedDict

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run from any directory without installing

import mmselds
from mmselds.utils.checkpoint import (InvalidCheckpointError, read_checkpoint,
                                      state_dict_of)

CALIBRATION = ('trained_ratio', 'calibrated_threshold')
# the end of the hint for a config or an image given as IN
USAGE = ('publish_model.py takes IN OUT: the trained checkpoint, then the '
         'output name')
PREFIX = 'backbone.mask_head.'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Process a checkpoint to be published')
    parser.add_argument('in_file', help='input checkpoint filename')
    parser.add_argument('out_file', help='output checkpoint filename')
    return parser.parse_args(argv)


def plain(value, where='meta'):
    """``value`` with plain Python types only (dict, list, tuple, str, int,
    float, bool, None): what ``torch.load(weights_only=True)`` accepts."""
    if value is None:
        return None
    for kind in (bool, int, float, str):  # subclasses too: TorchVersion
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {str(k): plain(v, f'{where}[{k!r}]') for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(v, f'{where}[{i}]') for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if hasattr(value, 'tolist'):  # numpy / torch scalars and arrays
        return plain(value.tolist(), where)
    return str(value)


def mask_calibration(state: dict, meta: dict) -> dict:
    """``meta['mask_calibration']`` with the floats of the mask head's
    calibration buffers (None for NaN: not set)."""
    calib = dict(meta.get('mask_calibration') or {})
    for name in CALIBRATION:
        tensor = state.get(PREFIX + name)
        if tensor is not None:
            value = float(tensor)
            calib[name] = None if math.isnan(value) else value
    return calib


def versions() -> dict:
    import mmengine
    import mmseg
    return dict(mmselds_version=mmselds.__version__,
                mmseg_version=mmseg.__version__,
                mmengine_version=mmengine.__version__,
                torch_version=torch.__version__)


def process_checkpoint(in_file: str, out_file: str) -> str:
    """Write the published checkpoint; returns its final path."""
    ckpt = read_checkpoint(in_file, usage=USAGE)
    if 'state_dict' not in ckpt:
        raise InvalidCheckpointError(
            f'{in_file} has no state_dict: not an mmengine checkpoint '
            f'(keys: {", ".join(map(str, list(ckpt)[:8]))})')
    state = OrderedDict(
        (k, v.detach().cpu().contiguous())
        for k, v in state_dict_of(ckpt, in_file).items())
    meta = dict(ckpt.get('meta') or {})
    if not any(k in meta for k in ('cfg', 'config')):
        print(f'warning: {in_file} carries no config text in meta')
    calib = mask_calibration(state, meta)
    if calib:
        meta['mask_calibration'] = calib
    meta.update(versions())
    published = dict(meta=plain(meta), state_dict=state)
    stem = out_file[:-4] if out_file.endswith('.pth') else out_file
    tmp = stem + '.pth.tmp'
    os.makedirs(osp.dirname(osp.abspath(tmp)), exist_ok=True)
    # saved to a buffer: torch.save(obj, path) names the archive's folder
    # after the file, which would make the bytes (and the hash in the
    # name) depend on OUT; a buffer's archive is always 'archive/'
    buffer = io.BytesIO()
    torch.save(published, buffer)
    data = buffer.getvalue()
    with open(tmp, 'wb') as f:
        f.write(data)
    final = f'{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth'
    os.replace(tmp, final)
    dropped = sorted(k for k in ckpt if k not in ('meta', 'state_dict'))
    print(f'dropped: {", ".join(dropped) if dropped else "nothing"}')
    if calib:
        print('mask calibration: ' + ', '.join(
            f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
            for k, v in calib.items() if k in CALIBRATION))
    return final


def main(argv=None):
    args = parse_args(argv)
    try:
        final = process_checkpoint(args.in_file, args.out_file)
    except ValueError as err:
        sys.exit(f'error: {err}')
    print(final)
    return final


if __name__ == '__main__':
    main()
