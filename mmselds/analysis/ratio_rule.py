"""A fixed down-sampling ratio at test time, for comparisons at one ratio.

A threshold on P(down-sample) reaches any ratio only when the
probabilities are distinct: a mask head that gives many cells the same P
(e.g. a head without normalisation whose ReLUs are silent on flat regions,
so those cells get the last conv's bias alone) moves all of them across the
threshold at once. :func:`fixed_ratio_rule` reaches the ratio exactly:
every image down-samples the ``round(ratio * cells)`` cells of highest P,
ties broken by raster order, as the default expected-ratio rule
(:func:`mmselds.ops.expected_ratio_mask`) breaks them.
"""
from contextlib import contextmanager
from typing import Tuple

import torch


def top_k_mask(prob: torch.Tensor, ratio: float) -> torch.Tensor:
    """(N, 1, h, w) binary mask, 1 = down-sample: per image the
    ``round(ratio * cells)`` cells of highest ``prob`` (stable order)."""
    if not 0 <= ratio <= 1:
        raise ValueError(f'ratio must be in [0, 1], got {ratio}')
    if prob.dim() != 4 or prob.shape[1] != 1:
        raise ValueError('prob must have shape (N, 1, h, w), got '
                         f'{tuple(prob.shape)}')
    flat = prob.detach().flatten(1).float()
    cells = flat.shape[1]
    keep = round(ratio * cells)
    order = flat.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(cells, device=prob.device)
                  .expand_as(order))
    return (rank < keep).to(prob.dtype).view_as(prob)


@contextmanager
def fixed_ratio_rule(head, ratio: float):
    """Within the block, ``head`` (a built mask head in eval mode) decides
    with :func:`top_k_mask` at ``ratio`` instead of its own rule or
    threshold; its own rule is back afterwards."""
    if not 0 <= ratio <= 1:
        raise ValueError(f'ratio must be in [0, 1], got {ratio}')

    def decide(logits):
        return top_k_mask(head.probability(logits), ratio).to(logits.dtype)

    head.decide = decide  # shadows the method for this instance
    try:
        yield head
    finally:
        del head.decide


def largest_tie(probs: torch.Tensor) -> Tuple[float, float]:
    """(value, fraction of the cells) of the most frequent P(down-sample)
    among ``probs``."""
    if probs.numel() == 0:
        raise ValueError('no probabilities')
    values, counts = probs.flatten().unique(return_counts=True)
    i = int(counts.argmax())
    return float(values[i]), float(counts[i]) / probs.numel()


__all__ = ['fixed_ratio_rule', 'largest_tie', 'top_k_mask']
