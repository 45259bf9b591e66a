from typing import Sequence

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import _load_checkpoint
from mmseg.registry import HOOKS


@HOOKS.register_module()
class CheckLoadFromHook(Hook):
    """Fail early when ``load_from`` does not fit the model.

    mmengine loads ``load_from`` non-strictly and only warns about missing
    keys, so a checkpoint of another depth or head silently leaves layers at
    their initialisation. This hook re-reads the checkpoint before training
    and raises ``ValueError`` naming every model parameter that is missing
    (other than the ones the checkpoint cannot have, e.g. the mask head) or
    has another shape.

    Args:
        allowed_missing (Sequence[str]): prefixes of parameters that may be
            absent. Default: ``('backbone.mask_head.', 'backbone.pooling.')``.
    """

    priority = 'VERY_LOW'

    def __init__(self, allowed_missing: Sequence[str] = (
            'backbone.mask_head.', 'backbone.pooling.')):
        self.allowed_missing = tuple(allowed_missing)

    def before_train(self, runner) -> None:
        path = runner._load_from
        if not path or runner._resume:
            return
        ckpt = _load_checkpoint(path, map_location='cpu')
        state = ckpt.get('state_dict', ckpt)
        state = {k[7:] if k.startswith('module.') else k: v
                 for k, v in state.items()}
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        missing, mismatched = [], []
        for key, value in model.state_dict().items():
            if key not in state:
                if not key.startswith(self.allowed_missing):
                    missing.append(key)
            elif tuple(state[key].shape) != tuple(value.shape):
                mismatched.append(f'{key}: checkpoint '
                                  f'{tuple(state[key].shape)}, model '
                                  f'{tuple(value.shape)}')
        if missing or mismatched:
            raise ValueError(
                f'load_from={path} does not fit the model: '
                f'{len(missing)} missing keys {missing[:10]}'
                f'{" ..." if len(missing) > 10 else ""}; '
                f'{len(mismatched)} shape mismatches {mismatched[:10]}')
        runner.logger.info(f'load_from {path}: every parameter found '
                           f'(allowed missing: {self.allowed_missing})')
