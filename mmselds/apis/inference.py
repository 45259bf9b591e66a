"""mmseg's Python inference API for selective models.

``init_model`` builds a model as :func:`mmseg.apis.init_model` does (the
model gets ``cfg`` and ``dataset_meta``, so mmseg's ``inference_model``
and ``show_result_pyplot`` take it), with this project's loading: a file
that is missing or not a checkpoint, or (``strict=True``) tensors that do
not fit the config, are one ``ValueError`` naming them, not a partly
loaded model with a log line; a checkpoint without a trained mask head
gets a warning. ``SelDSInferencer`` is mmseg's ``MMSegInferencer`` with
the same check. Both, and ``inference_model``, check images given as
arrays (:func:`check_image`).
"""
from typing import Optional, Union

import numpy as np
import torch
from mmengine.config import Config
from mmseg.apis import MMSegInferencer
from mmseg.apis import inference_model as _mmseg_inference_model

from ..utils.model_io import build_segmentor


def check_image(image, channels: int = 3) -> None:
    """Raise ``ValueError`` naming the problem if an image given as an
    array is not what mmseg's pipeline takes from ``cv2.imread``: an
    (H, W, 3) BGR array of 8-bit values (``uint8``, or floats of the same
    0-255 scale), or (H, W, ``channels``) for a model of other input
    channels. mmseg runs a 16-bit, boolean or 0-1 float array without a
    word (to wrong logits and masks) and fails deep inside on other
    shapes. Paths pass (the pipeline reads and converts the file)."""
    want = f'(H, W, {channels})' + (' BGR' if channels == 3 else '')
    if not isinstance(image, np.ndarray):
        if isinstance(image, torch.Tensor):
            raise ValueError(
                f'got a torch.Tensor of shape {tuple(image.shape)}: give an '
                f'{want} numpy array as cv2.imread returns, or a path')
        return
    shape = tuple(image.shape)
    fits = (image.ndim == 3 and shape[2] == channels) or (
        image.ndim == 2 and channels == 1)
    if not fits:
        last = shape[2] if image.ndim == 3 else 1
        if image.ndim == 3 and shape[0] == channels:
            raise ValueError(
                f'image of shape {shape} looks channels-first: give {want}, '
                'e.g. image.transpose(1, 2, 0)')
        if channels == 3 and image.ndim in (2, 3) and last == 1:
            raise ValueError(
                f'image of shape {shape} is single-channel: give {want}, '
                'e.g. cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)')
        if channels == 3 and image.ndim == 3 and last == 4:
            raise ValueError(
                f'image of shape {shape} has 4 channels: give the 3 colour '
                'channels (BGR), e.g. image[..., :3] for BGRA')
        raise ValueError(f'image of shape {shape}: the model takes {want} '
                         'arrays')
    if not image.size:
        raise ValueError(f'image of shape {shape} is empty')
    if image.dtype == np.uint8:
        return
    if image.dtype.kind == 'f':
        top = float(np.nanmax(image)) if not np.isnan(image).all() else 0.0
        if 0.0 < top <= 1.0:
            raise ValueError(
                f'{image.dtype} image with all values in [0, 1] (largest '
                f'{top:.3g}): the model takes pixel values 0-255 (as '
                'cv2.imread gives them): multiply by 255')
        return
    hint = ('; cv2.imread(path) reads a 16-bit file as 8-bit, or '
            '(image // 257).astype(np.uint8)' if image.dtype == np.uint16
            else '')
    raise ValueError(f'image of dtype {image.dtype}: the model takes 8-bit '
                     f'pixel values (uint8, 0-255){hint}')


def input_channels(model: torch.nn.Module) -> int:
    """The image channels a segmentor takes: its first convolution's
    input channels (3 if it has none)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module.in_channels
    return 3


def inference_model(model: torch.nn.Module, img):
    """mmseg's ``inference_model`` (an image path or (H, W, 3) BGR array,
    or a list of them; a ``SegDataSample``, or a list) with the arrays
    checked first (:func:`check_image`, for the model's input channels)."""
    channels = input_channels(model)
    for image in img if isinstance(img, (list, tuple)) else [img]:
        check_image(image, channels)
    return _mmseg_inference_model(model, img)


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

    def _inputs_to_list(self, inputs) -> list:
        inputs = super()._inputs_to_list(inputs)
        channels = input_channels(self.model)
        for image in inputs:
            check_image(image, channels)
        return inputs

    def _init_model(self, cfg, weights, device='cpu'):
        if not cfg:  # the config from the checkpoint: mmengine's way
            return super()._init_model(cfg, weights, device)
        model, _ = build_segmentor(cfg, weights, device=device,
                                   strict=self.strict)
        return model
