"""Python inference for selective models: ``init_model`` and
``SelDSInferencer`` load checkpoints strictly (``mmselds.apis.inference``);
``inference_model`` is mmseg's, with images given as arrays checked;
mmseg's ``show_result_pyplot`` takes their models and is here too, so one
import serves::

    from mmselds.apis import inference_model, init_model
    model = init_model(CONFIG, CHECKPOINT)
    result = inference_model(model, 'image.png')
    result.pred_sem_seg      # as mmseg's
    result.ds_ratio          # the fraction of cells computed at OS16
    result.ds_mask           # PixelData (1, H, W) at the image's size:
                             # 1 = down-sampled (OS16), 0 = OS8
"""
from mmseg.apis import show_result_pyplot

from .inference import (SelDSInferencer, check_image, inference_model,
                        init_model)

__all__ = ['init_model', 'inference_model', 'show_result_pyplot',
           'SelDSInferencer', 'check_image']
