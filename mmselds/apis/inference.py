"""mmseg's Python inference API for selective models.

``init_model`` builds a model as :func:`mmseg.apis.init_model` does (the
model gets ``cfg`` and ``dataset_meta``, so mmseg's ``inference_model``
and ``show_result_pyplot`` take it), with this project's loading: a file
that is missing or not a checkpoint, or (``strict=True``) tensors that do
not fit the config, are one ``ValueError`` naming them, not a partly
loaded model with a log line; a checkpoint without a trained mask head
gets a warning. ``SelDSInferencer`` is mmseg's ``MMSegInferencer`` with
the same check.
"""
from typing import Optional, Union

import torch
from mmengine.config import Config
from mmseg.apis import MMSegInferencer

from ..utils.model_io import build_segmentor


def init_model(config: Union[str, Config], checkpoint: Optional[str] = None,
               device: Optional[str] = None,
               cfg_options: Optional[dict] = None,
               strict: bool = True) -> torch.nn.Module:
    """A segmentor in eval mode from a config (path or ``Config``) and a
    checkpoint (None: random initialisation, to count or time it).

    Args:
        config: config file or ``Config`` (not changed).
        checkpoint: checkpoint file written by ``tools/train.py``,
            ``publish_model.py``, ``calibrate_mask.py`` or
            ``mmseg2selds.py``.
        device: ``'cuda:0'``, ``'cpu'``...; None: the first GPU if there is
            one, else the CPU.
        cfg_options: ``--cfg-options`` as a dict
            (``{'model.backbone.mask_head.threshold': 0.7}``).
        strict: False loads the tensors that fit, with a warning (the
            tools' ``--no-strict-load``).
    """
    if device is None:
        device = 'cuda:0' if torch.cuda.is_available() else 'cpu'
    model, _ = build_segmentor(config, checkpoint, cfg_options, device,
                               strict)
    return model


class SelDSInferencer(MMSegInferencer):
    """``MMSegInferencer`` (same arguments, results and outputs) that
    loads as :func:`init_model` does: a missing or unreadable file is an
    ``InvalidCheckpointError`` naming it, and with ``strict=True`` a
    tensor that does not fit the config is a ``CheckpointMismatchError``
    naming it, where ``MMSegInferencer`` loads what fits and logs the
    rest; class names without any in the checkpoint are the config's.

    Example::

        from mmselds.apis import SelDSInferencer
        inferencer = SelDSInferencer(CONFIG, CHECKPOINT, device='cpu')
        result = inferencer('image.png', out_dir='outputs')
    """

    def __init__(self, model, weights: Optional[str] = None, *args,
                 strict: bool = True, **kwargs) -> None:
        self.strict, self.weights_path = strict, weights
        super().__init__(model, weights, *args, **kwargs)

    def _init_model(self, cfg, weights, device='cpu'):
        if not cfg:  # the config from the checkpoint: mmengine's way
            return super()._init_model(cfg, weights, device)
        model, _ = build_segmentor(cfg, weights, device=device,
                                   strict=self.strict)
        return model
