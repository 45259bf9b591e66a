"""Calibrating the test-time threshold of a mask head."""
from typing import Iterable

import torch


def mask_probabilities(model, batches: Iterable[dict]) -> torch.Tensor:
    """P(down-sample) of every cell of these batches (model in eval)."""
    probs = []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            inputs = model.data_preprocessor(batch, False)['inputs']
            model.backbone(inputs)
            head = model.backbone.mask_head
            probs.append(head.probability(model.backbone.last_logits)
                         .flatten().double().cpu())
    return torch.cat(probs)


def threshold_for_ratio(probs: torch.Tensor, ratio: float) -> float:
    """The threshold on P(down-sample) that down-samples a fraction
    ``ratio`` of these cells (a cell is down-sampled when P > threshold)."""
    if not 0 <= ratio <= 1:
        raise ValueError(f'ratio must be in [0, 1], got {ratio}')
    if ratio == 0:
        return 1.0
    return float(min(max(torch.quantile(probs, 1 - ratio) - 1e-9, 0.0), 1.0))


def calibrated_threshold(probs: torch.Tensor) -> float:
    """The deterministic counterpart of training's Gumbel sampling: the
    threshold that down-samples the fraction of cells the model was trained
    to down-sample, ``mean(P)`` (the expected ratio of hard Gumbel samples).
    Use training images: the rule looks at no label and no test image."""
    return threshold_for_ratio(probs, float(probs.mean()))
