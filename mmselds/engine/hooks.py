from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.runner.checkpoint import find_latest_checkpoint
from mmseg.registry import HOOKS

from mmselds.utils.checkpoint import (ALLOWED_MISSING, check_checkpoint,
                                      model_state_of, read_checkpoint)


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
    """

    priority = 'VERY_LOW'

    def __init__(self, strict: bool = True,
                 allowed_missing: Sequence[str] = ALLOWED_MISSING):
        self.strict = strict
        self.allowed_missing = tuple(allowed_missing)
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

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        path = self._path or 'the loaded checkpoint'
        diff = check_checkpoint(checkpoint, runner.model, path,
                                strict=self.strict,
                                allowed_missing=self.allowed_missing,
                                logger=runner.logger)
        if diff.allowed_missing:
            # the model's own initial values: loading them changes nothing,
            # and mmengine does not repeat the notice as a block of
            # "missing keys" warnings
            state = checkpoint.get('state_dict', checkpoint)
            own = model_state_of(runner.model)
            for key in diff.allowed_missing:
                state[key] = own[key]


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


def add_check_load_hook(cfg, strict: bool = True):
    """Make a config's loading strict (or not, ``strict=False``): add a
    ``CheckLoadFromHook`` to ``custom_hooks`` when the config has none (a
    user's own config), and set ``strict`` on the ones it has."""
    return add_hook(cfg, 'CheckLoadFromHook', strict=strict)
