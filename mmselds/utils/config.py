"""Reading a config file for the tools: a path that is not a config file
(a typo, a checkpoint given in its place) is one named error instead of
mmengine's traceback."""
import ast
import difflib
import inspect
import linecache
import logging
import os
import os.path as osp
import re
import traceback
from typing import Dict, List, Mapping, Optional, Tuple

from mmengine.config import Config
from mmengine.logging import print_log

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
    cfg = Config.fromfile(path)
    for line in stale_variables(path, cfg):
        print_log(line, logger='current', level=logging.WARNING)
    return cfg


_MISSING = object()


def _plain(cfg) -> Mapping:
    """A ``Config`` as nested plain dicts and lists (a dict as it is)."""
    return cfg.to_dict() if isinstance(cfg, Config) else cfg


def _child(node, part: str):
    """``node[part]`` for a dict, ``node[int(part)]`` for a list, or
    ``_MISSING``: one step of a dotted ``--cfg-options`` key."""
    if isinstance(node, (list, tuple)) and part.isdigit() \
            and int(part) < len(node):
        return node[int(part)]
    if isinstance(node, Mapping) and part in node:
        return node[part]
    return _MISSING


def _leaving_keys(cfg, options: Mapping):
    """``(key, names, node)`` for each ``--cfg-options`` key whose path
    leaves ``cfg`` (a ``Config`` or its plain dict): ``names`` are the
    key's parts up to and including the first one ``node`` (a dict of
    ``cfg``) does not hold."""
    root = _plain(cfg)
    for key in options:
        parts, node = key.split('.'), root
        for depth, part in enumerate(parts):
            child = _child(node, part)
            if child is _MISSING:
                if isinstance(node, Mapping):
                    yield key, parts[:depth + 1], node
                break
            node = child


def misspelt_options(cfg: Config, options: Mapping) -> List[str]:
    """One line for each ``--cfg-options`` key whose path leaves ``cfg``
    (before they are merged) at a name that has a close spelling next to
    it: ``train_cfg.max_iter: not in the config; did you mean
    train_cfg.max_iters?``. New keys are legitimate (a constructor's
    default, such as ``model.backbone.mask_head.threshold``), so these are
    hints, not errors."""
    return _hints(_leaving_keys(cfg, options))


def _hints(leaving) -> List[str]:
    """:func:`misspelt_options`'s lines for ``_leaving_keys``' results."""
    lines = []
    for key, names, node in leaving:
        close = difflib.get_close_matches(
            names[-1], [str(k) for k in node], n=1, cutoff=0.8)
        if close:
            lines.append(f'{key}: not in the config; did you mean '
                         f'{".".join(names[:-1] + close)}?')
    return lines


# top-level keys something reads after the config is read: mmengine's
# Runner (its arguments) and the tools; any other top-level key with a
# plain value is a variable of the config file (data_root, crop_size)
RUNTIME_KEYS = frozenset((
    'model', 'work_dir', 'train_dataloader', 'val_dataloader',
    'test_dataloader', 'train_cfg', 'val_cfg', 'test_cfg', 'auto_scale_lr',
    'optim_wrapper', 'param_scheduler', 'val_evaluator', 'test_evaluator',
    'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from',
    'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level',
    'visualizer', 'default_scope', 'randomness', 'experiment_name',
    'custom_imports', 'tta_model', 'tta_pipeline'))


def spent_variables(cfg, options: Mapping) -> List[str]:
    """One line for each top-level ``--cfg-options`` key that is a
    variable of the config file (``data_root=DIR``): the file used its
    value when it was read, so the option changes nothing that runs; the
    line names the settings that hold that value (the ones to set).
    ``cfg``: a ``Config`` or its plain dict."""
    root = _plain(cfg)
    lines = []
    for key in options:
        if '.' in key or key in RUNTIME_KEYS or key not in root:
            continue
        value = root[key]
        if not isinstance(value, (str, int, float, tuple, list)) or \
                isinstance(value, bool):
            continue
        uses = [path for path in _paths_holding(root, value)
                if path.split('.')[0] in RUNTIME_KEYS]
        if isinstance(value, (int, float)) and (
                value in (-1, 0, 1) or len(uses) > 6):
            continue  # a common number: its paths say nothing
        if uses:
            shown = _listed(uses)
            lines.append(
                f'{key}: a variable of the config file, used when the file '
                f'was read; changing it changes nothing that runs: set '
                f'the settings that hold its value instead: {shown}')
    return lines


def stale_variables(path: str, cfg) -> List[str]:
    """One line for each top-level variable that the config file at
    ``path`` sets to a new value (``crop_size = (64, 128)``) where a base
    config had used the old value in settings that still hold it
    (``train_pipeline``'s crop, ``model.data_preprocessor.size``):
    mmengine merges settings, not variables, so those keep the base's
    value. ``cfg``: the config read from ``path``. Reads each base once
    more, and only when the file sets such a variable."""
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return []
    names, bases = [], []
    for node in tree.body:
        for target in getattr(node, 'targets', ()):
            if not isinstance(target, ast.Name):
                continue
            if target.id == '_base_':
                try:
                    bases = ast.literal_eval(node.value)
                except ValueError:
                    bases = []
            elif not target.id.startswith('_') and \
                    target.id not in RUNTIME_KEYS:
                names.append(target.id)
    bases = [bases] if isinstance(bases, str) else list(bases)
    if not names or not bases:
        return []
    final, lines = _plain(cfg), []

    def unused(setting):  # the runner takes model.data_preprocessor first
        return setting.startswith('data_preprocessor.') and \
            'data_preprocessor' in (final.get('model') or {})

    for base in bases:
        try:  # a relative path or a package's (mmseg::), as mmengine
            old_root = _plain(Config.fromfile(
                Config._get_cfg_path(base, path)[0]))
        except Exception:  # the config read; a base it cannot read again
            continue
        for name in names:
            old = old_root.get(name, _MISSING)
            if old is _MISSING or old == final.get(name) or \
                    _common_number(old):
                continue
            stale = [p for p in _paths_holding(old_root, old)
                     if p.split('.')[0] in RUNTIME_KEYS
                     and _node(final, p.split('.')) == old
                     and not unused(p)]
            if stale:
                shown = _listed(stale)
                lines.append(
                    f'{osp.basename(path)}: {name} = {_short(final[name])} '
                    f'changes a variable that {base} used when it was read; '
                    f'these settings still hold its old value '
                    f'{_short(old)}: {shown}; set them in this file too '
                    '(mmengine merges settings, not variables)')
    return lines


def _listed(paths: List[str]) -> str:
    """The first four settings' paths, and how many more."""
    return ', '.join(paths[:4]) + (
        f' ... ({len(paths) - 4} more)' if len(paths) > 4 else '')


def _common_number(value) -> bool:
    return isinstance(value, bool) or not isinstance(
        value, (str, int, float, tuple, list, dict)) or (
        isinstance(value, (int, float)) and value in (-1, 0, 1))


def _short(value) -> str:
    text = repr(value)
    if len(text) <= 40:
        return text
    return (f'[{len(value)} items]' if isinstance(value, (list, tuple))
            else text[:37] + '...')


def _paths_holding(node, value, path: str = ''):
    """The dotted paths in nested dicts/lists whose value equals
    ``value``."""
    if node == value and path and type(node) is type(value):
        yield path
        return
    items = node.items() if isinstance(node, Mapping) else enumerate(
        node) if isinstance(node, (list, tuple)) else ()
    for k, v in items:
        yield from _paths_holding(v, value, f'{path}.{k}' if path else str(k))


# --cfg-options keys that added a setting the config did not have, by the
# setting's name: what `option_error` explains (one tool run per process).
_ADDED_OPTIONS: Dict[str, List[str]] = {}
# --cfg-options keys that changed the `type` of a dict of the config, by
# the new type: ('key=value', the old type, the dict's other keys).
_RETYPED: Dict[str, List[Tuple[str, str, List[str]]]] = {}


def _node(root, names):
    """The value at ``names`` in nested dicts/lists ``root``, or None."""
    for part in names:
        root = _child(root, part)
        if root is _MISSING:
            return None
    return root


def _short_type(value) -> str:
    """'FCNHead' for 'FCNHead', 'mmseg.FCNHead' or the class itself."""
    return getattr(value, '__name__', str(value)).split('.')[-1]


def _record_retyped(root: Mapping, options: Mapping) -> None:
    """Remember each option that gives a dict of ``root`` (a config as
    plain dicts) another ``type``: mmengine then keeps the dict's other
    keys, which the new class may not take."""
    for key, value in options.items():
        names = key.split('.')
        if names[-1] != 'type' or len(names) < 2:
            continue
        owner = _node(root, names[:-1])
        if not isinstance(owner, Mapping) or 'type' not in owner \
                or _short_type(owner['type']) == _short_type(value):
            continue
        entry = (f'{key}={value}', _short_type(owner['type']),
                 [k for k in owner if k != 'type'])
        retyped = _RETYPED.setdefault(_short_type(value), [])
        if entry not in retyped:
            retyped.append(entry)


def merge_options(cfg: Config, options: Optional[Mapping]) -> Config:
    """Merge ``--cfg-options`` into ``cfg`` as mmengine does, after a
    warning for each key with a close spelling in the config
    (:func:`misspelt_options`); the keys that add a setting are remembered,
    so that a class that does not take it is named by
    :func:`option_error`, not by a traceback. Returns ``cfg``."""
    if not options:
        return cfg
    root = cfg.to_dict()  # read by each check below, before the merge
    leaving = list(_leaving_keys(root, options))
    for line in _hints(leaving) + spent_variables(root, options):
        print_log(f'--cfg-options {line}', logger='current',
                  level=logging.WARNING)
    for key, names, _ in leaving:
        if len(names) < len(key.split('.')):
            continue  # a new subtree, not a new setting
        added = _ADDED_OPTIONS.setdefault(names[-1], [])
        if key not in added:  # once, however often the options are merged
            added.append(key)
    _record_retyped(root, options)
    cfg.merge_from_dict(options)
    return cfg


def option_error(err: BaseException) -> Optional[str]:
    """For a ``TypeError`` a constructor raised on a keyword that only
    ``--cfg-options`` put into the config (``ResNet.__init__() got an
    unexpected keyword argument 'zzz'`` after ``model.backbone.zzz=1``):
    a message naming the option and, when the class mmengine was building
    takes a name of close spelling, that name. For a keyword the config
    gave the dict whose ``type`` an option changed
    (``model.decode_head.type=FCNHead`` keeps ``SelDSASPPHead``'s
    ``dilations``): a message naming the option and the config line that
    replaces the whole dict. None for any other error."""
    found = _unexpected_keyword(err)
    if not found:
        return None
    name = found.group(2)
    built = _called_class(err, found.group(1).split('.')[0])
    cls_name = built.__name__ if built else found.group(1).split('.')[0]
    for key, old, kept in _RETYPED.get(cls_name, ()):
        if name in kept:
            owner = key.split('=')[0][:-len('.type')]
            return (f'--cfg-options {key}: {cls_name} takes no argument '
                    f'{name!r}, a setting {owner} keeps from the config\'s '
                    f'{old} (an option changes the type only, the other '
                    'settings stay); give the whole dict in a config that '
                    'inherits this one: '
                    + _replacing(owner.split('.'), cls_name))
    if name not in _ADDED_OPTIONS:
        return None
    keys = ' or '.join(f'--cfg-options {k}' for k in _ADDED_OPTIONS[name])
    close = _close_argument(name, built)
    hint = (f'did you mean {close}?' if close else
            'misspelt, or an option of another class?')
    return (f'{keys}: {cls_name} takes no argument '
            f'{name!r}; the config has no such setting and the option adds '
            f'it ({hint})')


def argument_error(err: BaseException) -> Optional[str]:
    """For an error in a constructor argument of the config while
    mmengine's registry built a class from it: a keyword of the config
    the class does not take (``DepthwiseMaskHead takes no argument
    'treshold' (did you mean threshold?)``, whatever the class), or a
    ``ValueError``/``TypeError`` that a ``raise`` statement of this
    project raised on a value (``threshold must be None or a number in
    [0, 1], got 'high'``), led by the class's name. None for any other
    error, bugs included: those keep their traceback."""
    if not isinstance(err, (ValueError, TypeError)):
        return None
    frames = list(traceback.walk_tb(err.__traceback__))
    builds = _build_frames(err)
    if not builds:
        return None
    built = _built_class(err)
    innermost, line = frames[-1]
    found = _unexpected_keyword(err)
    if found and _named_in(built, found.group(1).split('.')[0]) and \
            found.group(2) in (builds[-1].f_locals.get('args') or ()) and (
            innermost.f_code.co_name == 'build_from_cfg' or (
                innermost.f_code.co_name == '__init__'
                and isinstance(innermost.f_locals.get('self'), built))):
        name = found.group(2)
        close = _close_argument(name, built)
        return (f'{built.__name__} takes no argument {name!r}'
                + (f' (did you mean {close}?)' if close else ''))
    source = innermost.f_code.co_filename
    if not osp.abspath(source).startswith(_PACKAGE) \
            or not linecache.getline(source, line).lstrip().startswith(
                'raise ') or re.search(_CALL_ERRORS, str(err)):
        return None  # not a check of ours: a bug, keep its traceback
    message = str(err)
    if built is None or message.startswith(built.__name__):
        return message
    return f'{built.__name__}: {message}'


def _build_frames(err: BaseException) -> list:
    """The frames of mmengine's ``build_from_cfg`` that ``err`` passed
    through, outermost first."""
    return [f for f, _ in traceback.walk_tb(err.__traceback__)
            if f.f_code.co_name == 'build_from_cfg']


def registry_error(err: BaseException) -> Optional[str]:
    """For mmengine's ``KeyError`` on a ``type`` its registry does not
    hold (``DepthwiseMaskHeadd is not in the mmseg::model registry``): a
    message naming the type and the registered types of close spelling.
    None for any other error."""
    if not isinstance(err, KeyError):
        return None
    builds = _build_frames(err)
    if not builds:
        return None
    registry = builds[-1].f_locals.get('registry')
    obj_type = builds[-1].f_locals.get('obj_type')
    if registry is None or not isinstance(obj_type, str) or \
            not str(err).strip('\'"').startswith(f'{obj_type} is not in'):
        return None
    names, node = [], registry
    while node is not None:
        names += list(node.module_dict)
        node = node.parent
    close = difflib.get_close_matches(obj_type, names, n=3, cutoff=0.6)
    hint = f' (did you mean {" or ".join(close)}?)' if close else ''
    return (f'type={obj_type!r}: no {registry.name} of that name is '
            f'registered{hint}; the types of another package are registered '
            "when the config imports it (custom_imports=dict(imports=["
            "'package']))")


# what Python says of a call with wrong arguments (a bug, not a check)
_CALL_ERRORS = (r'\(\) (got an unexpected keyword|got multiple values|'
                r'missing \d+ required|takes )')
# the mmselds package folder: errors raised in its files
_PACKAGE = osp.dirname(osp.dirname(osp.abspath(__file__))) + os.sep


def _replacing(names: List[str], cls_name: str) -> str:
    """The config line that replaces the dict at ``names``:
    ``model = dict(decode_head=dict(_delete_=True, type='FCNHead', ...))``
    (a path through a list: the dict itself, with ``_delete_=True``)."""
    inner = f"dict(_delete_=True, type='{cls_name}', ...)"
    if any(part.isdigit() for part in names):
        return f'{".".join(names)} = {inner}'
    for part in reversed(names[1:]):
        inner = f'dict({part}={inner})'
    return f'{names[0]} = {inner}'


def _called_class(err: BaseException, name: str):
    """The class named ``name`` (from ``Name.__init__() got an unexpected
    keyword argument``) that ``err`` was raised on: the class mmengine's
    registry was building when ``name`` is it or one of its bases, else a
    class of that name in the scope of the raising frames (``DataLoader``,
    which mmengine's runner calls directly while it builds the loop), or
    None."""
    built = _built_class(err)
    if _named_in(built, name):
        return built
    for frame, _ in reversed(list(traceback.walk_tb(err.__traceback__))):
        for scope in (frame.f_locals, frame.f_globals):
            found = scope.get(name)
            if isinstance(found, type):
                return found
    return None


def _unexpected_keyword(err: BaseException):
    """The match of ``Name.__init__() got an unexpected keyword argument
    'x'`` in a ``TypeError`` (groups: the callee, the keyword), or
    None."""
    if not isinstance(err, TypeError):
        return None
    return re.search(r"(\S+)\(\) got an unexpected keyword argument "
                     r"'(\w+)'", str(err))


def _named_in(cls, name: str) -> bool:
    """Whether ``cls`` or one of its bases is called ``name``."""
    return cls is not None and name in {k.__name__ for k in cls.__mro__}


def _close_argument(name: str, cls) -> Optional[str]:
    """The constructor argument of ``cls`` closest in spelling to
    ``name``, or None."""
    close = difflib.get_close_matches(name, _arguments_of(cls), n=1,
                                      cutoff=0.7)
    return close[0] if close else None


def _built_class(err: BaseException):
    """The class mmengine's registry was building when ``err`` was raised
    (``obj_cls`` of the innermost ``build_from_cfg`` frame), or None."""
    found, tb = None, err.__traceback__
    while tb is not None:
        obj_cls = tb.tb_frame.f_locals.get('obj_cls')
        if isinstance(obj_cls, type):
            found = obj_cls
        tb = tb.tb_next
    return found


def _arguments_of(cls) -> List[str]:
    """The keyword arguments the constructors of ``cls`` and its bases
    name (those reached through ``**kwargs`` included)."""
    names = []
    for klass in getattr(cls, '__mro__', ()):
        try:
            params = inspect.signature(klass.__init__).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.name != 'self' and p.kind in (
            p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return list(dict.fromkeys(names))
