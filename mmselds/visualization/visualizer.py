"""mmseg's visualizer, with the down-sampling mask on the prediction."""
from typing import Optional

import numpy as np
from mmseg.registry import VISUALIZERS
from mmseg.visualization import SegLocalVisualizer

from .masks import overlay_mask, result_cells


@VISUALIZERS.register_module()
class SelDSLocalVisualizer(SegLocalVisualizer):
    """``SegLocalVisualizer`` (same arguments, backends and figures) that
    outlines, on the prediction panel, the cells a selective model
    computed at full resolution (OS8) and writes their share in the
    corner, as ``tools/analysis_tools/visualize_masks.py`` does; the
    ground-truth panel is mmseg's. It reads the prediction's ``ds_mask``
    (``SelDSEncoderDecoder``'s results); data samples without one are
    drawn as mmseg draws them. The selective configs use it, so
    ``tools/test.py --show-dir`` and ``SelDSInferencer(...,
    out_dir=...)`` show the mask::

        visualizer = dict(type='SelDSLocalVisualizer', draw_mask=True)

    Args:
        draw_mask (bool): draw the mask on the prediction. Default: True.
        **kwargs: the arguments of ``SegLocalVisualizer``.
    """

    def __init__(self, name: str = 'visualizer', *args,
                 draw_mask: bool = True, **kwargs) -> None:
        super().__init__(name, *args, **kwargs)
        self.draw_mask = draw_mask
        self._masked = None  # the data sample being drawn, if it has a mask

    def add_datasample(self, name: str, image: np.ndarray,
                       data_sample=None, *args, **kwargs) -> None:
        if self.draw_mask and data_sample is not None and all(
                key in data_sample for key in ('ds_mask', 'pred_sem_seg')):
            self._masked = data_sample
        try:
            super().add_datasample(name, image, data_sample, *args, **kwargs)
        finally:
            self._masked = None

    def _draw_sem_seg(self, image: np.ndarray, sem_seg, *args,
                      **kwargs) -> np.ndarray:
        drawn = super()._draw_sem_seg(image, sem_seg, *args, **kwargs)
        sample: Optional[object] = self._masked
        if sample is None or sem_seg is not sample.pred_sem_seg:
            return drawn  # the ground truth, or no mask to draw
        mask, scale = result_cells(sample, drawn.shape[0])
        # overlay_mask draws in BGR; the visualizer's images are RGB
        return overlay_mask(drawn[..., ::-1], mask, scale,
                            alpha=0.0)[..., ::-1].copy()
