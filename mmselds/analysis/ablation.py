"""The letter's ablation (its Table 1) on results of our own runs: which
components a selective model uses, which row of the letter they make, and
the seed spread of a measurement.

Torch-free: the functions read attributes of built models and plain
numbers, so that ``mmselds.analysis`` keeps importing with torch alone.
"""
import math
from typing import Dict, List, Optional, Sequence

# The letter's Table 1 (Cityscapes, DeepLabV3-R101-D8, mask-head FLOPs at
# 1024x2048): each row by the components it uses (mask head class, pooling
# mode of the stage-3 entrance and cell refresh, sparsity-loss mode).
LETTER_TABLE1 = (
    dict(row='Baseline (CAD)', mask_head='CADMaskHead', pooling='stride',
         loss='target', mIoU=0.77, mask_head_flops=690e6),
    dict(row='Prop. 1', mask_head='DepthwiseMaskHead', pooling='stride',
         loss='target', mIoU=0.74, mask_head_flops=130e6),
    dict(row='Prop. 2', mask_head='DepthwiseMaskHead', pooling='adaptive',
         loss='target-free', mIoU=0.77, mask_head_flops=140e6),
)
# the input size of the letter's mask-head column
LETTER_SHAPE = (1024, 2048)


def describe_mask_head(head) -> str:
    """``Type(in_channels; hidden widths; norm)`` of a built mask head,
    e.g. ``CADMaskHead(32; 32, 16; no norm)``."""
    convs = [m for m in head.modules() if type(m).__name__ == 'Conv2d'
             and m.groups == 1]
    widths = ', '.join(str(m.out_channels) for m in convs[:-1][:2])
    norms = sorted({type(m).__name__ for m in head.modules()
                    if 'Norm' in type(m).__name__})
    norm = '+'.join(norms) if norms else 'no norm'
    return f'{type(head).__name__}({head.in_channels}; {widths}; {norm})'


def model_components(model) -> Dict[str, object]:
    """The ablation's components of a built selective segmentor, read from
    the model itself: mask head (class name and description), pooling mode
    and sparsity loss (mode, target, weight; ``'none'`` without one).

    Raises:
        ValueError: the model has no selective backbone (no mask head).
    """
    backbone = getattr(model, 'backbone', None)
    head = getattr(backbone, 'mask_head', None)
    if head is None:
        raise ValueError(
            f'{type(model).__name__} with a {type(backbone).__name__} '
            'backbone has no mask head: not a selective down-sampling model')
    loss = getattr(model, 'sparsity_loss', None)
    return dict(
        mask_head=type(head).__name__,
        mask_head_desc=describe_mask_head(head),
        pooling=backbone.pool_mode,
        loss='none' if loss is None else loss.mode,
        loss_target=None if loss is None else loss.target,
        loss_weight=None if loss is None else loss.loss_weight,
        tau=head.tau)


def letter_row(components: Dict[str, object]) -> Optional[dict]:
    """The row of :data:`LETTER_TABLE1` these components make, or None."""
    for row in LETTER_TABLE1:
        if all(components.get(k) == row[k]
               for k in ('mask_head', 'pooling', 'loss')):
            return row
    return None


def loss_label(components: Dict[str, object]) -> str:
    """``target, t = 0.853`` / ``target-free`` / ``none``, with the
    weight."""
    if components['loss'] == 'none':
        return 'none'
    target = components.get('loss_target')
    text = components['loss'] if target is None else \
        f'{components["loss"]}, t = {target:.3g}'
    return f'{text} (w {components["loss_weight"]:g})'


def spread(values: Sequence[float]) -> Dict[str, object]:
    """Mean, half-range ((max - min) / 2) and standard deviation (n - 1;
    0 for one value) of the values of several seeds; NaNs are dropped (and
    counted in ``nan``)."""
    values = [float(v) for v in values]
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return dict(mean=math.nan, half_range=math.nan, std=math.nan,
                    n=0, nan=len(values), values=values)
    n = len(finite)
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean)**2 for v in finite) / (n - 1)) \
        if n > 1 else 0.0
    return dict(mean=mean, half_range=(max(finite) - min(finite)) / 2,
                std=std, n=n, nan=len(values) - n, values=values)


def has_spread(*spreads: Dict[str, object]) -> bool:
    """Whether every :func:`spread` result has a spread to judge a
    difference by: two or more seeds."""
    return all(s['n'] >= 2 for s in spreads)


def beyond_spread(a: Dict[str, object], b: Dict[str, object]) -> bool:
    """Whether two :func:`spread` results differ by more than their seed
    spreads: the intervals mean +- half-range do not overlap (needs two or
    more seeds on each side, :func:`has_spread`)."""
    if not has_spread(a, b):
        return False
    return abs(a['mean'] - b['mean']) > a['half_range'] + b['half_range']


def format_spread(s: Dict[str, object], digits: int = 2) -> str:
    """``mean ± half-range`` (the mean alone for one seed)."""
    if s['n'] == 0:
        return 'nan'
    if s['n'] == 1:
        return f'{s["mean"]:.{digits}f}'
    return f'{s["mean"]:.{digits}f} ± {s["half_range"]:.{digits}f}'


def aggregate_runs(runs: Sequence[dict]) -> dict:
    """One ablation row from the runs of several seeds of one config.

    Args:
        runs (sequence[dict]): per seed, with ``mIoU``, ``ds_ratio``,
            ``trained_ratio``, ``backbone_gmacs``, ``matched`` (a dict with
            ``mIoU`` and ``ds_ratio`` at the common ratio), the mask head
            and pooling MACs ``mask_head_macs``, ``pooling_macs``,
            ``mask_head_macs_ref``, ``pooling_macs_ref``, and ``sweep``
            (points with ``ratio``, ``mIoU``, ``ds_ratio``,
            ``backbone_gmacs``, the same ratios in every run).

    Returns:
        dict: the spread of each measurement across seeds, the mean MACs and
        the mean curve (``curve``: per sweep ratio, mean ``backbone_gmacs``
        and ``ds_ratio``, the spread of ``mIoU``).
    """
    if not runs:
        raise ValueError('no runs to aggregate')
    row = {key: spread([r[key] for r in runs])
           for key in ('mIoU', 'ds_ratio', 'trained_ratio', 'backbone_gmacs')}
    row['matched_mIoU'] = spread([r['matched']['mIoU'] for r in runs])
    row['matched_ratio'] = spread([r['matched']['ds_ratio'] for r in runs])
    for key in ('mask_head_macs', 'pooling_macs', 'mask_head_macs_ref',
                'pooling_macs_ref'):
        row[key] = sum(r[key] for r in runs) / len(runs)
    ratios = [p['ratio'] for p in runs[0]['sweep']]
    if any([p['ratio'] for p in r['sweep']] != ratios for r in runs):
        raise ValueError('the runs were swept over different ratios')
    row['curve'] = [
        dict(ratio=ratio,
             ds_ratio=sum(r['sweep'][i]['ds_ratio'] for r in runs) / len(runs),
             backbone_gmacs=sum(r['sweep'][i]['backbone_gmacs']
                                for r in runs) / len(runs),
             mIoU=spread([r['sweep'][i]['mIoU'] for r in runs]))
        for i, ratio in enumerate(ratios)]
    row['seeds'] = [r['seed'] for r in runs]
    return row


def compare_rows(rows: Dict[str, dict], key: str) -> List[dict]:
    """Every pair of rows (in order) on one spread measurement: the
    difference of the means (second - first) and whether it is larger than
    the seed spread (:func:`beyond_spread`)."""
    names = list(rows)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = rows[a][key], rows[b][key]
            out.append(dict(first=a, second=b,
                            difference=sb['mean'] - sa['mean'],
                            beyond_spread=beyond_spread(sa, sb)))
    return out


__all__ = [
    'LETTER_SHAPE', 'LETTER_TABLE1', 'aggregate_runs', 'beyond_spread',
    'compare_rows', 'describe_mask_head', 'format_spread', 'has_spread',
    'letter_row', 'loss_label', 'model_components', 'spread'
]
