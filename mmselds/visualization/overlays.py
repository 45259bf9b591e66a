"""Mask figures of a selective segmentor's predictions, written to files."""
import os
import os.path as osp
from typing import List, Sequence

import cv2
import torch

from .masks import mask_panel, palette_image, result_cells


def write_mask_overlays(model, batches: Sequence[dict], out_dir: str,
                        palette: Sequence, count: int) -> List[str]:
    """Run the model on the first ``count`` batches and write, for each
    image, the mask figure of :func:`mask_panel` (the image with the mask
    drawn on it, the prediction, a legend) as ``<image name>_mask.png``.

    Args:
        model (SelDSEncoderDecoder): a selective segmentor in eval mode;
            each of its results holds the cells it down-sampled
            (``ds_mask``, whole or slide inference).
        batches (sequence[dict]): data batches of one image each, as
            mmseg's test data loader gives them (``test_step`` input); the
            image is read again from its ``img_path``.
        out_dir (str): folder of the figures, created if absent.
        palette (sequence): RGB colour of each class (mmseg's
            ``dataset_meta['palette']``).
        count (int): how many images to draw.

    Returns:
        list[str]: the paths written, in the order of ``batches``.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    with torch.no_grad():
        for batch in batches[:count]:
            out = model.test_step(batch)[0]
            image = cv2.imread(out.img_path)
            mask, scale = result_cells(out, image.shape[0])
            pred = palette_image(out.pred_sem_seg.data[0].cpu().numpy(),
                                 palette)
            path = osp.join(out_dir, osp.splitext(osp.basename(
                out.img_path))[0] + '_mask.png')
            cv2.imwrite(path, mask_panel(image, mask, scale, pred))
            paths.append(path)
    return paths
