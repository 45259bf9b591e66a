"""Python inference for selective models: ``init_model`` and
``SelDSInferencer`` load checkpoints strictly (``mmselds.apis.inference``);
mmseg's ``inference_model`` and ``show_result_pyplot`` take their models
and are here too, so one import serves::

    from mmselds.apis import inference_model, init_model
    model = init_model(CONFIG, CHECKPOINT)
    result = inference_model(model, 'image.png')
    result.pred_sem_seg      # as mmseg's
    result.ds_ratio          # the fraction of cells computed at OS16
    model.backbone.last_mask  # (1, 1, H/16, W/16), 1 = down-sampled
"""
from mmseg.apis import inference_model, show_result_pyplot

from .inference import SelDSInferencer, init_model

__all__ = ['init_model', 'inference_model', 'show_result_pyplot',
           'SelDSInferencer']
