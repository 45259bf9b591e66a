from typing import Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class DownsampleRatioMetric(BaseMetric):
    """Mean down-sampling ratio over the evaluated images (the fraction of
    cells that stages 3-4 computed at OS16), reported as ``ds_ratio``.

    Reads the ``ds_ratio`` that ``SelDSEncoderDecoder.predict`` stores in
    every data sample; use it beside ``IoUMetric``::

        val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']),
                         dict(type='DownsampleRatioMetric')]
    """

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'ds_ratio' not in sample:
                raise KeyError('DownsampleRatioMetric needs predictions of a '
                               'SelDSEncoderDecoder (no ds_ratio found)')
            self.results.append(float(sample['ds_ratio']))

    def compute_metrics(self, results: list) -> dict:
        return dict(ds_ratio=float(np.mean(results)))
