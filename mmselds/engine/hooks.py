from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner.checkpoint import find_latest_checkpoint
from mmseg.registry import HOOKS

from mmselds.utils.checkpoint import (ALLOWED_MISSING, check_checkpoint,
                                      compare_state_dicts, decision_buffers,
                                      model_state_of, read_checkpoint,
                                      state_dict_of, unwrap)
from mmselds.utils.config import InvalidConfigError


@HOOKS.register_module()
class CheckLoadFromHook(Hook):
    """Stop with an error when a loaded checkpoint does not fit the model.

    mmengine loads checkpoints non-strictly and only logs what it skipped,
    so a checkpoint of another depth, width or head silently leaves layers
    at their initialisation. This hook covers every checkpoint the runner
    loads (``load_from`` in training, ``tools/test.py CONFIG CHECKPOINT``,
    ``--resume``):

    * ``before_run``: the file is read once, so that a missing, empty,
      truncated or corrupt file is a ``ValueError`` naming the file;
    * ``after_load_checkpoint`` (before mmengine copies the tensors into the
      model): any missing key, unexpected key or shape mismatch raises a
      ``ValueError`` naming the first ones (``name: checkpoint (a, b),
      model (c, d)``). Missing keys under ``allowed_missing`` (the mask head
      and pooling, which an mmseg checkpoint cannot have) get a one-line
      notice and are filled in with the model's own initial values, so
      that mmengine loads them unchanged without its block of warnings.

    Args:
        strict (bool): raise on a mismatch; if False, log a warning and let
            mmengine load what fits (``--no-strict-load`` of our tools).
            Default: True.
        allowed_missing (Sequence[str]): prefixes of model keys that may be
            absent from the checkpoint.
            Default: ``('backbone.mask_head.', 'backbone.pooling.')``.
        inference (bool): the checkpoint is tested, not trained from
            (``tools/test.py`` sets it): missing ``allowed_missing``
            tensors are then a warning that the mask head is untrained, as
            are the tensors a checkpoint converted by ``mmseg2selds.py``
            lists as filled with their initialisation. Default: False.
        fine_tunes (str, optional): what a fine-tuning config starts from
            (``'the dense OS8 demo model (tools/demo.py passes ...)'``):
            training without ``load_from`` (and without a checkpoint to
            ``--resume`` from) is then an ``InvalidConfigError`` that says
            so, instead of a run from random initialisation.
            Default: None.
    """

    priority = 'VERY_LOW'

    def __init__(self, strict: bool = True,
                 allowed_missing: Sequence[str] = ALLOWED_MISSING,
                 inference: bool = False,
                 fine_tunes: Optional[str] = None):
        self.strict = strict
        self.fine_tunes = fine_tunes
        self.allowed_missing = tuple(allowed_missing)
        self.inference = inference
        self._path: Optional[str] = None

    @staticmethod
    def checkpoint_path(runner) -> Optional[str]:
        """The file ``Runner.load_or_resume`` will load, if any."""
        if runner._load_from is not None:
            return str(runner._load_from)
        if runner._resume:
            return find_latest_checkpoint(runner.work_dir)
        return None

    def before_run(self, runner) -> None:
        if getattr(runner, '_has_loaded', False):
            return
        self._path = self.checkpoint_path(runner)
        if self._path:
            read_checkpoint(self._path)  # ValueError naming a bad file
        elif self.fine_tunes and not self.inference:
            hooks = (getattr(runner, 'cfg', None) or {}).get(
                'custom_hooks') or []
            index = next((i for i, h in enumerate(hooks) if h.get('type') in
                          ('CheckLoadFromHook', type(self))), None)
            anyway = '' if index is None else (
                '; to train it from random initialisation anyway: '
                f'--cfg-options custom_hooks.{index}.fine_tunes=None')
            raise InvalidConfigError(
                f'this config fine-tunes {self.fine_tunes}, and no '
                'checkpoint is given: set load_from (--cfg-options '
                f'load_from=PATH){anyway}')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        path = self._path or 'the loaded checkpoint'
        diff = check_checkpoint(checkpoint, runner.model, path,
                                strict=self.strict,
                                allowed_missing=self.allowed_missing,
                                logger=runner.logger,
                                inference=self.inference)
        if diff.allowed_missing:
            # the model's own initial values: loading them changes nothing,
            # and mmengine does not repeat the notice as a block of
            # "missing keys" warnings
            state = checkpoint.get('state_dict', checkpoint)
            own = model_state_of(runner.model)
            for key in diff.allowed_missing:
                state[key] = own[key]

    def before_test(self, runner) -> None:
        """Log the mask decision the test runs with (explicit threshold,
        the checkpoint's calibrated one, or the expected-ratio rule)."""
        backbone = getattr(unwrap(runner.model), 'backbone', None)
        head = getattr(backbone, 'mask_head', None)
        if head is not None and hasattr(head, 'decision_rule'):
            print_log(f'mask decision: {head.decision_rule()}',
                      logger=runner.logger)


def add_hook(cfg, hook_type: str, **options):
    """Add a ``hook_type`` hook to a config's ``custom_hooks`` when it has
    none (a user's own config), and set ``options`` on the ones it has."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    found = [h for h in hooks if h.get('type') in
             (hook_type, HOOKS.get(hook_type))]
    if not found:
        hooks.append(dict(type=hook_type))
        found = hooks[-1:]
    for hook in found:
        hook.update(options)
    cfg.custom_hooks = hooks
    return cfg


def add_check_load_hook(cfg, strict: bool = True, inference: bool = False):
    """Make a config's loading strict (or not, ``strict=False``): add a
    ``CheckLoadFromHook`` to ``custom_hooks`` when the config has none (a
    user's own config), and set ``strict`` and ``inference`` (True for
    testing) on the ones it has."""
    return add_hook(cfg, 'CheckLoadFromHook', strict=strict,
                    inference=inference)


def _not_a_resume_point(runner, path: str) -> Optional[str]:
    """Why the checkpoint ``path`` is not a state ``runner`` can resume
    from, or None if it is one."""
    ckpt = read_checkpoint(path)
    absent = [k for k in ('optimizer', 'message_hub') if k not in ckpt]
    if absent:
        return f'it holds no {" or ".join(absent)} state'
    allowed = next((h.allowed_missing for h in getattr(runner, 'hooks', ())
                    if isinstance(h, CheckLoadFromHook)), ALLOWED_MISSING)
    lacks = compare_state_dicts(state_dict_of(ckpt, path),
                                model_state_of(runner.model),
                                allowed).allowed_missing
    buffers = set(decision_buffers(lacks))
    lacks = [k for k in lacks if k not in buffers]
    if lacks:
        return f'it lacks {len(lacks)} tensors of the model ({lacks[0]}, ...)'
    meta = ckpt.get('meta') or {}
    train_cfg = (getattr(runner, 'cfg', None) or {}).get('train_cfg') or {}
    for unit, key in (('iter', 'max_iters'), ('epoch', 'max_epochs')):
        done, end = meta.get(unit), train_cfg.get(key)
        if isinstance(done, int) and isinstance(end, int) and done >= end:
            return (f'it is at {unit} {done}, the end of this run\'s '
                    f'{key}={end}')
    return None


def resolve_resume(runner) -> Optional[str]:
    """Make ``--resume`` work on a fine-tuning config; return the file the
    run will load (None: none).

    mmengine resumes from ``load_from`` when it is set (mmseg's way to
    resume from a chosen checkpoint: ``--resume --cfg-options
    load_from=CKPT``). A fine-tuning config's ``load_from`` is its
    initialisation instead (the dense OS8 checkpoint, an mmseg release, a
    published model): resuming from it stopped deep inside the optimizer
    (``loaded state dict has a different number of parameter groups``) or
    restarted at that run's iteration. So when ``load_from`` is not a
    training state of this model (no optimizer or message hub in it, it
    lacks the model's mask head or pooling, or it is at or past this
    run's ``max_iters`` / ``max_epochs``: another run's end, e.g. the
    fine-tune start of a ``maskonly`` config), ``--resume`` does what it
    does without ``load_from``: it continues from the latest checkpoint in
    the work dir, or, with none there yet, starts the run from
    ``load_from``. Each choice is logged. (Every rank of a distributed run
    decides the same way from the same files, as mmengine's own
    ``find_latest_checkpoint`` does.)
    """
    if not runner._resume:
        return CheckLoadFromHook.checkpoint_path(runner)
    if runner._load_from is None:
        return find_latest_checkpoint(runner.work_dir)
    path = str(runner._load_from)
    why = _not_a_resume_point(runner, path)
    if why is None:
        return path  # a training state of this run: resume from it
    latest = find_latest_checkpoint(runner.work_dir)
    if latest:
        runner._load_from = latest
        print_log(f'--resume: load_from={path} is the initialisation of '
                  f'this run, not a state to resume ({why}): resuming from '
                  f'{latest}, the latest checkpoint in {runner.work_dir}',
                  logger='current')
        return latest
    runner._resume = False
    print_log(f'--resume: no checkpoint in {runner.work_dir} yet, and '
              f'load_from={path} is the initialisation of this run, not a '
              f'state to resume ({why}): starting the run from it',
              logger='current')
    return path
