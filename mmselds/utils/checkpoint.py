"""Reading checkpoints and checking that they fit a model, in one place.

``read_checkpoint`` turns an unreadable file (missing, empty, truncated,
corrupt) into one ``ValueError`` naming the file; ``compare_state_dicts``
lists what differs between a checkpoint and a model by name;
``check_checkpoint`` applies the comparison with the rules of our tools
(missing mask-head and pooling parameters are expected of an mmseg
checkpoint and only noted; anything else is an error unless not strict).
"""
import codecs
import logging
import os.path as osp
import socket
import urllib.error
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner.checkpoint import _load_checkpoint

# Parameters an mmseg DeepLabV3 / ResNetV1c checkpoint cannot have: the
# selective backbone's mask head and pooling start from their initialisation.
ALLOWED_MISSING = ('backbone.mask_head.', 'backbone.pooling.')
# the mask head's buffers for its evaluation-time decision
# (``BaseMaskHead``), which checkpoints written before they existed lack:
# without them evaluation uses the expected-ratio rule, as for a
# checkpoint whose training never recorded a ratio
DECISION_BUFFERS = ('trained_ratio', 'calibrated_threshold', 'ratio_updates')


def decision_buffers(keys: Sequence[str]) -> List[str]:
    """The keys among ``keys`` that are a mask head's decision buffers."""
    return [k for k in keys if '.mask_head.' in f'.{k}'
            and k.rsplit('.', 1)[-1] in DECISION_BUFFERS]


class InvalidCheckpointError(ValueError):
    """A file that cannot be read as a checkpoint."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model."""


def _is_remote(path: str) -> bool:
    return '://' in str(path)


def download_error(err: BaseException) -> Optional[str]:
    """For an error raised while a checkpoint was downloaded
    (``load_from``, ``model.pretrained``, an ``init_cfg`` of type
    ``Pretrained``, a URL given to a tool): a message naming the URL and,
    for an HTTP error, the server's answer (check the URL), for a network
    failure, the reason and the file in the download cache where a copy
    fetched elsewhere would be used. None for any other error (a
    download cache that cannot be written keeps its traceback)."""
    network = isinstance(err, (urllib.error.URLError, ConnectionError,
                               TimeoutError, socket.gaierror))
    if not network:
        return None
    url = cached = None
    tb = err.__traceback__
    while tb is not None:  # mmengine's load_url / torch.hub's frames
        names = tb.tb_frame.f_locals
        if isinstance(names.get('url'), str) and '://' in names['url']:
            url = names['url']
        if isinstance(names.get('cached_file'), str):
            cached = names['cached_file']
        tb = tb.tb_next
    if url is None:
        return None
    if isinstance(err, urllib.error.HTTPError):
        return (f'downloading {url} failed: the server answered '
                f'{err.code} {err.reason}; check the URL (a typo? a file '
                'the server no longer has?)')
    reason = getattr(err, 'reason', None) or err
    where = (f'copy the file fetched elsewhere to {cached}' if cached else
             'download it elsewhere')
    return (f'downloading {url} failed ({reason}): no network? On a machine '
            f'without one, {where}, or give a local file instead '
            '(configs/selds/README.md)')


def read_checkpoint(path: str, map_location='cpu',
                    usage: Optional[str] = None) -> dict:
    """The checkpoint dict stored at ``path`` (a local file or anything
    mmengine's ``_load_checkpoint`` reads: URLs, ``open-mmlab://``...).

    ``usage`` ends the hint for an image or a text file given instead
    (arguments in the wrong order?): the calling tool's arguments, e.g.
    'mmseg2selds.py takes SRC CONFIG DST'; default: 'The tools take
    CONFIG CHECKPOINT, then the rest'.

    Raises:
        InvalidCheckpointError (a ``ValueError``): the file is missing, empty,
            truncated or corrupt, or holds something other than a dict; the
            message names the file, the original error is the cause.
    """
    path = str(path)
    if not _is_remote(path):
        if not osp.isfile(path):
            raise InvalidCheckpointError(
                f'{path} is not a valid checkpoint: no such file')
        if osp.getsize(path) == 0:
            raise InvalidCheckpointError(
                f'{path} is not a valid checkpoint: the file is empty')
    try:
        ckpt = _load_checkpoint(path, map_location=map_location) \
            if _is_remote(path) else _load_local(path, map_location)
    except Exception as err:  # unpickling can fail in many ways
        failed = download_error(err) if _is_remote(path) else None
        if failed:
            raise InvalidCheckpointError(failed) from err
        kind = None if _is_remote(path) else file_kind(path)
        if kind:
            hint = _KIND_HINTS.get(kind, 'arguments in the wrong order? ' + (
                usage or 'The tools take CONFIG CHECKPOINT, then the rest'))
            raise InvalidCheckpointError(
                f'{path} is not a checkpoint but {kind} ({hint})') from err
        reason = ' '.join(str(err).split())
        if len(reason) > 200:
            reason = reason[:197] + '...'
        what = (f'{path} could not be read' if _is_remote(path) and
                isinstance(err, OSError) else  # e.g. the download cache
                f'{path} is not a valid checkpoint (truncated or corrupt?)')
        raise InvalidCheckpointError(
            f'{what}: {type(err).__name__}' + (f': {reason}' if reason else '')
        ) from err
    if not isinstance(ckpt, Mapping):
        raise InvalidCheckpointError(
            f'{path} is not a valid checkpoint: it holds a '
            f'{type(ckpt).__name__}, not a dict')
    return ckpt


# the first bytes of files that get passed where a checkpoint belongs
_SIGNATURES = ((b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'),
               (b'GIF8', 'a GIF image'), (b'BM', 'a BMP image'),
               (b'II*\x00', 'a TIFF image'), (b'MM\x00*', 'a TIFF image'))


_KIND_HINTS = {
    'a Git LFS pointer': 'the checkpoint itself was not downloaded: run '
                         '`git lfs pull`, or download the file',
    'an HTML page': 'a download that returned a web page instead of the '
                    'file: download it again',
}


def file_kind(path: str) -> Optional[str]:
    """'a PNG image', 'a JPEG image', ... for an image file, 'a Git LFS
    pointer', 'an HTML page', 'a text file' for other text (a config, a
    log), else None."""
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError:
        return None
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    try:  # incremental: a character cut at byte 512 is not an error
        text = codecs.getincrementaldecoder('utf-8')().decode(head)
    except UnicodeDecodeError:
        return None
    if text.startswith('version https://git-lfs'):
        return 'a Git LFS pointer'
    if text.lstrip().lower().startswith(('<!doctype html', '<html')):
        return 'an HTML page'
    printable = all(c.isprintable() or c in '\t\r\n' for c in text)
    return 'a text file' if text and printable else None


def _load_local(path: str, map_location):
    """``torch.load`` of a local file: tensors-only first, then (for the
    plain Python objects of mmengine's ``meta``) the full unpickler, as
    mmengine does, without its warning in between."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        return torch.load(path, map_location=map_location, weights_only=False)


def state_dict_of(ckpt: Mapping, path: str = 'checkpoint') -> Dict:
    """The weights of a checkpoint dict (its ``state_dict``, or the dict
    itself when it maps names to tensors), with a leading ``module.``
    stripped from every name."""
    state = ckpt.get('state_dict', ckpt)
    if not isinstance(state, Mapping):
        raise InvalidCheckpointError(
            f'{path} is not a valid checkpoint: its state_dict is a '
            f'{type(state).__name__}, not a dict')
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidCheckpointError(
            f'{path} is not a valid checkpoint: no state_dict, and '
            f'{bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor')
    return strip_prefix(state)


def strip_prefix(state: Mapping, prefix: str = 'module.') -> Dict:
    n = len(prefix)
    return {k[n:] if k.startswith(prefix) else k: v for k, v in state.items()}


@dataclass
class StateDictDiff:
    """What differs between a checkpoint's and a model's state dicts."""

    missing: List[str] = field(default_factory=list)
    allowed_missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    # (name, checkpoint shape, model shape)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 5) -> str:
        """One line: shape mismatches first (the usual sign of another
        depth or width), then unexpected and missing keys."""

        def cut(items):
            return ', '.join(items[:limit]) + (
                f', ... ({len(items) - limit} more)'
                if len(items) > limit else '')

        parts = []
        if self.mismatched:
            parts.append(f'{len(self.mismatched)} shape mismatches: ' + cut(
                [f'{k}: checkpoint {_fmt(a)}, model {_fmt(b)}'
                 for k, a, b in self.mismatched]))
        if self.unexpected:
            parts.append(f'{len(self.unexpected)} unexpected keys (in the '
                         f'checkpoint, not in the model): '
                         + cut(self.unexpected))
        if self.missing:
            parts.append(f'{len(self.missing)} missing keys (in the model, '
                         f'not in the checkpoint): ' + cut(self.missing))
        return '; '.join(parts) if parts else 'every tensor fits'


def _fmt(shape: tuple) -> str:
    return '(' + ', '.join(str(s) for s in shape) + ')'


def compare_state_dicts(
        checkpoint_state: Mapping, model_state: Mapping,
        allowed_missing: Sequence[str] = ALLOWED_MISSING) -> StateDictDiff:
    """Compare a checkpoint's state dict with a model's, by name, after
    stripping a leading ``module.`` on both sides. Model keys that start
    with one of ``allowed_missing``, and a mask head's decision buffers,
    may be absent from the checkpoint."""
    ckpt = strip_prefix(checkpoint_state)
    model = strip_prefix(model_state)
    allowed = tuple(allowed_missing)
    diff = StateDictDiff()
    for key, value in model.items():
        if key not in ckpt:
            (diff.allowed_missing if allowed and key.startswith(allowed)
             or decision_buffers([key]) else diff.missing).append(key)
        elif tuple(ckpt[key].shape) != tuple(value.shape):
            diff.mismatched.append(
                (key, tuple(ckpt[key].shape), tuple(value.shape)))
    diff.unexpected = [k for k in ckpt if k not in model]
    return diff


def model_state_of(model: torch.nn.Module) -> Dict:
    """The state dict of a model, of a wrapped model (DDP) or of a
    test-time-augmentation model, named as in a checkpoint."""
    return unwrap(model).state_dict()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The segmentor inside a model wrapper (DDP) or a TTA model."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


UNTRAINED = ('so the masks, the down-sampling ratio, the cost and the '
             'accuracy measured with it reflect a random mask head, not '
             'the method: evaluate a fine-tuned selective checkpoint '
             '(configs/selds/README.md)')


def _prefixes(keys: Sequence[str], prefixes: Sequence[str]) -> str:
    """'a.*, b.*': the prefixes some of ``keys`` start with."""
    return ', '.join(sorted({p + '*' for p in prefixes for k in keys
                             if k.startswith(p)}))


def converted_untrained(checkpoint: Mapping) -> List[str]:
    """The tensors that ``tools/model_converters/mmseg2selds.py`` filled
    with their initialisation, as its ``meta['initialised']`` lists them
    (the mask head and pooling; for a bare backbone also the heads; with
    ``--no-strict-load`` whatever the source lacked): a converted
    checkpoint carries every tensor, so only its meta tells that these are
    untrained. A checkpoint written by training has mmengine's meta (no
    such list): empty."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping) or 'converted_from' not in meta:
        return []
    return [k for k in meta.get('initialised') or () if isinstance(k, str)]


def module_prefixes(keys: Sequence[str], counts: bool = False) -> str:
    """'backbone.layer4.*, decode_head.*': the modules ``keys`` are in
    (with ``counts``: 'backbone.layer4.* (30), decode_head.* (8)')."""
    found: Dict[str, int] = {}
    for k in keys:
        depth = 2 if k.startswith('backbone.') else 1
        prefix = '.'.join(k.split('.')[:depth]) + '.*'
        found[prefix] = found.get(prefix, 0) + 1
    return ', '.join(p + (f' ({found[p]})' if counts else '')
                     for p in sorted(found))


def check_checkpoint(checkpoint: Mapping, model: torch.nn.Module,
                     path: str = 'checkpoint', strict: bool = True,
                     allowed_missing: Sequence[str] = ALLOWED_MISSING,
                     logger='current',
                     inference: bool = False) -> StateDictDiff:
    """Check that ``checkpoint`` (a checkpoint dict or a state dict) fits
    ``model``.

    Keys under ``allowed_missing`` that the checkpoint lacks get a one-line
    notice: expected when training starts from an mmseg checkpoint, a
    warning with ``inference=True`` (testing, analysis: the mask head is
    then untrained). When they are only the mask head's decision
    buffers (``DECISION_BUFFERS``: a checkpoint written before they
    existed), the notice says that evaluation uses the expected-ratio
    rule. A checkpoint written by
    ``tools/model_converters/mmseg2selds.py`` has those keys, filled with
    their initialisation; its meta lists them, and with
    ``inference=True`` it gets the same warning. Any other missing key,
    an unexpected key or a shape mismatch raises
    ``CheckpointMismatchError`` (a ``ValueError``) naming the first ones,
    or, with ``strict=False``, a warning.
    """
    diff = compare_state_dicts(state_dict_of(checkpoint, path),
                               model_state_of(model), allowed_missing)
    message = f'{path} does not fit the model: {diff.describe()}'
    if not diff.ok and strict:  # before any notice about what fits
        raise CheckpointMismatchError(
            message + ' (is the config the one the checkpoint was '
            'trained with? To load what fits anyway: --no-strict-load '
            'of tools/train.py and tools/test.py, strict=False in '
            'CheckLoadFromHook)')
    buffers = decision_buffers(diff.allowed_missing)
    if diff.allowed_missing and len(buffers) == len(diff.allowed_missing):
        # a trained mask head, written before these buffers existed
        names = sorted({k.rsplit('.', 1)[-1] for k in buffers})
        print_log(f'{path}: the mask head has no {"/".join(names)} buffers '
                  '(written before they existed): unless a threshold is '
                  'given, evaluation down-samples by the expected-ratio '
                  'rule; tools/misc/calibrate_mask.py stores one',
                  logger=logger, level=logging.INFO)
    elif diff.allowed_missing:
        what = (f'{path}: {len(diff.allowed_missing)} tensors under '
                f'{_prefixes(diff.allowed_missing, allowed_missing)} are not '
                'in the checkpoint and keep their ')
        if inference:
            print_log(what + f'random initialisation, {UNTRAINED}',
                      logger=logger, level=logging.WARNING)
        else:
            print_log(what + 'initialisation (expected for an mmseg '
                      'checkpoint)', logger=logger, level=logging.INFO)
    converted = converted_untrained(checkpoint) if inference else []
    if converted:
        prefixes = tuple(allowed_missing)
        mask, other = [], []
        for k in converted:
            (mask if prefixes and k.startswith(prefixes) else other).append(k)
        source = (f'tools/model_converters/mmseg2selds.py (converted from '
                  f'{checkpoint["meta"].get("converted_from", "?")})')
        for keys, where, meaning in (
                (mask, _prefixes(mask, allowed_missing), f', {UNTRAINED}'),
                (other, module_prefixes(other), ': the predictions and the '
                 'accuracy measured with it are those of untrained layers; '
                 'fine-tune it first (configs/selds/README.md)')):
            if keys:
                print_log(f'{path}: {len(keys)} tensors under {where} were '
                          f'filled with their random initialisation by '
                          f'{source} and not trained since{meaning}',
                          logger=logger, level=logging.WARNING)
    if not diff.ok:
        print_log(message + ' (not strict: loading what fits)',
                  logger=logger, level=logging.WARNING)
    return diff


def load_model_checkpoint(model: torch.nn.Module, path: str,
                          strict: bool = True,
                          allowed_missing: Sequence[str] = ALLOWED_MISSING,
                          map_location='cpu',
                          logger: Optional[str] = 'current',
                          inference: bool = True) -> dict:
    """Read ``path``, check it against ``model`` (``check_checkpoint``; for
    inference by default: a missing mask head is a warning) and load the
    tensors that fit. Returns the checkpoint dict."""
    ckpt = read_checkpoint(path, map_location=map_location)
    diff = check_checkpoint(ckpt, model, path, strict, allowed_missing,
                            logger, inference)
    mismatched = {k for k, _, _ in diff.mismatched}
    state = {k: v for k, v in state_dict_of(ckpt, path).items()
             if k not in mismatched}
    unwrap(model).load_state_dict(state, strict=False)
    return ckpt
