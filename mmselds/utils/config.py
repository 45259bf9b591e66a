"""Reading a config file for the tools: a path that is not a config file
(a typo, a checkpoint given in its place) is one named error instead of
mmengine's traceback."""
import difflib
import os
import os.path as osp
from typing import List, Mapping

from mmengine.config import Config

CONFIG_EXTENSIONS = ('.py', '.json', '.yml', '.yaml')


class InvalidConfigError(ValueError):
    """A config path that does not exist or is not a config file."""


def read_config(path) -> Config:
    """``Config.fromfile(path)``, after checking that ``path`` is a config
    file: a missing one is an ``InvalidConfigError`` that names the
    closest file names in its folder, another extension (``.pth``: the
    tools take CONFIG before CHECKPOINT) one that says so. Paths with a
    package scope (``mmseg::...``) go to mmengine unchanged."""
    path = str(path)
    if '::' in path:
        return Config.fromfile(path)
    if not osp.isfile(path):
        folder = osp.dirname(path) or '.'
        close = difflib.get_close_matches(
            osp.basename(path), sorted(os.listdir(folder)), n=3) \
            if osp.isdir(folder) else []
        hint = (' (did you mean ' + ' or '.join(
            osp.join(osp.dirname(path), c) for c in close) + '?)'
            if close else '')
        raise InvalidConfigError(f'config file {path} does not exist{hint}')
    if osp.splitext(path)[1] not in CONFIG_EXTENSIONS:
        raise InvalidConfigError(
            f'{path} is not a config file ({", ".join(CONFIG_EXTENSIONS)})'
            + ('; the tools take the CONFIG first, then the CHECKPOINT'
               if path.endswith(('.pth', '.pt', '.ckpt')) else ''))
    return Config.fromfile(path)


def misspelt_options(cfg: Config, options: Mapping) -> List[str]:
    """One line for each ``--cfg-options`` key whose path leaves ``cfg``
    (before they are merged) at a name that has a close spelling next to
    it: ``train_cfg.max_iter: not in the config; did you mean
    train_cfg.max_iters?``. New keys are legitimate (a constructor's
    default, such as ``model.backbone.mask_head.threshold``), so these are
    hints, not errors."""
    lines, root = [], cfg.to_dict()
    for key in options:
        parts = key.split('.')
        node = root
        for depth, part in enumerate(parts):
            if isinstance(node, (list, tuple)) and part.isdigit() \
                    and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, Mapping):
                break
            if part in node:
                node = node[part]
                continue
            close = difflib.get_close_matches(
                part, [str(k) for k in node], n=1, cutoff=0.8)
            if close:
                lines.append(f'{key}: not in the config; did you mean '
                             f'{".".join(parts[:depth] + close)}?')
            break
    return lines
