"""Calibrating the test-time threshold of a mask head on training images.

A selective model needs no calibration to test right: its mask head's
default rule down-samples the fraction of cells training did (see
``BaseMaskHead.decide``). Calibration sets a *global* threshold instead,
for a chosen ratio or for the trained one, and stores it in the checkpoint
(``backbone.mask_head.calibrated_threshold``); ``tools/misc/
calibrate_mask.py`` is the command line for it.
"""
import math
from typing import Callable, Iterable, Optional

import torch

CALIBRATION_KEY = 'backbone.mask_head.calibrated_threshold'


def mask_probabilities(model, batches: Iterable[dict],
                       on_batch: Optional[Callable[[], None]] = None
                       ) -> torch.Tensor:
    """P(down-sample) of every cell of these batches, model in eval mode.

    Runs only what the decision needs: the stem, stages 1-2 and the mask
    head (stages 3-4 and the decode head are skipped).
    """
    from mmselds.models.backbones.selds_resnet import dense_stages
    probs = []
    model.eval()
    backbone, head = model.backbone, model.backbone.mask_head
    with torch.no_grad():
        for batch in batches:
            inputs = model.data_preprocessor(batch, False)['inputs']
            logits = head(dense_stages(backbone, inputs)[-1])
            probs.append(head.probability(logits).flatten().double().cpu())
            if on_batch is not None:
                on_batch()
    if not probs:
        raise ValueError('no images to calibrate on')
    return torch.cat(probs)


def threshold_for_ratio(probs: torch.Tensor, ratio: float) -> float:
    """The threshold on P(down-sample) that down-samples a fraction
    ``ratio`` of these cells (a cell is down-sampled when P > threshold);
    with tied probabilities the fraction reached is the nearest one the ties
    allow."""
    if not 0 <= ratio <= 1 or math.isnan(ratio):
        raise ValueError(f'ratio must be in [0, 1], got {ratio}')
    if probs.numel() == 0:
        raise ValueError('no probabilities to calibrate on')
    k = round(ratio * probs.numel())  # cells to down-sample
    if k == 0:
        return 1.0
    ordered = probs.flatten().double().sort(descending=True).values
    # just below the k-th largest probability: that cell and every larger
    # one are down-sampled
    return float(min(max(ordered[k - 1].item() - 1e-9, 0.0), 1.0))


def build_calibration_loader(cfg, num_images: Optional[int] = None):
    """The training images of ``cfg`` through its *test* pipeline (whole
    images, no augmentation), batch 1, no worker processes."""
    from mmengine.runner import Runner

    from mmselds.datasets.checks import check_dataset_images
    loader = cfg.test_dataloader.copy()
    dataset = cfg.train_dataloader.dataset.copy()
    while 'dataset' in dataset and 'pipeline' not in dataset:
        dataset = dataset.dataset.copy()  # e.g. RepeatDataset
    dataset.pipeline = cfg.test_dataloader.dataset.pipeline
    check_dataset_images(dataset, 'train_dataloader')
    if num_images is not None:
        dataset.indices = num_images
    loader.update(dataset=dataset, batch_size=1, num_workers=0,
                  persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    return Runner.build_dataloader(loader)
