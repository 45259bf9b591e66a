from typing import List

import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors import SegTTAModel
from mmseg.registry import MODELS
from mmseg.utils import SampleList


@MODELS.register_module()
class SelDSTTAModel(SegTTAModel):
    """mmseg's ``SegTTAModel`` (softmax-averaged predictions of the
    augmented passes, e.g. flips and scales) for a ``SelDSEncoderDecoder``.

    ``SegTTAModel.merge_preds`` keeps the metainfo of the last augmented
    pass only, so ``DownsampleRatioMetric`` would report that pass's
    down-sampling ratio and ``ds_mask`` would be that pass's mask. Here
    each merged prediction carries the mean ``ds_ratio`` and the mean
    ``ds_mask`` (flips undone, at the original size: the fraction of the
    passes that down-sampled each pixel) of all its augmented passes (each
    pass weighs the same, as the forwards of slide inference do in
    ``SelDSEncoderDecoder``)::

        tta_model = dict(type='SelDSTTAModel')
    """

    def merge_preds(self, data_samples_list: List[SampleList]) -> SampleList:
        merged = super().merge_preds(data_samples_list)
        for result, passes in zip(merged, data_samples_list):
            ratios = [float(s.ds_ratio) for s in passes if 'ds_ratio' in s]
            if ratios:
                result.set_metainfo(dict(ds_ratio=sum(ratios) / len(ratios)))
            masks = [s.ds_mask.data for s in passes if 'ds_mask' in s]
            if masks:
                result.ds_mask = PixelData(
                    data=torch.stack(masks).mean(0))
        return merged
