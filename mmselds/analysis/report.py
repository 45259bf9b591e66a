"""Text summaries of evaluation results (Markdown tables, sweep lines)."""
from typing import Dict, Sequence

from .ablation import beyond_spread, format_spread, has_spread, loss_label

# (header, key, format) of the cost and time columns of results_table
RESULT_COLUMNS = (('backbone GMACs', 'backbone_gmacs', '.3f'),
                  ('model GMACs', 'model_gmacs', '.3f'),
                  ('forward ms / image', 'forward_ms', '.1f'),
                  ('CPU ms / image', 'latency_ms', '.1f'))


def results_table(results: Dict[str, dict]) -> str:
    """A Markdown table with mmseg's columns, one row per model.

    Args:
        results (dict): model name -> a dict with ``mIoU`` (%),
            ``ds_ratio`` (the down-sampling ratio, None for a dense model),
            ``backbone_gmacs``, ``latency_ms`` (per image) and, optionally,
            ``model_gmacs`` (backbone + decode head: the inference cost) and
            ``forward_ms`` (the network's time per image, without mmseg's
            data preprocessing and post-processing).

    Returns:
        str: the header, the separator and one row per model, in the order
        of ``results``, joined by newlines. The ``model GMACs`` and
        ``forward ms / image`` columns are there when every model has
        ``model_gmacs`` and ``forward_ms``.
    """
    columns = [(head, key, fmt) for head, key, fmt in RESULT_COLUMNS
               if key in ('backbone_gmacs', 'latency_ms')
               or all(key in r for r in results.values())]
    rows = ['| model | mIoU | ds ratio | ' +
            ' | '.join(head for head, _, _ in columns) + ' |',
            '|' + '---|' * (3 + len(columns))]
    for name, r in results.items():
        ratio = '-' if r['ds_ratio'] is None else f'{r["ds_ratio"]:.3f}'
        rows.append(f'| {name} | {r["mIoU"]:.2f} | {ratio} | ' + ' | '.join(
            format(r[key], fmt) for _, key, fmt in columns) + ' |')
    return '\n'.join(rows)


def distinct_digits(values: Sequence[float], least: int = 4,
                    most: int = 12) -> int:
    """The fewest significant digits (at least ``least``) that print
    different ``values`` differently (thresholds of a sweep can differ in
    the fifth digit)."""
    wanted = len(set(values))
    for digits in range(least, most + 1):
        if len({f'{v:.{digits}g}' for v in values}) == wanted:
            return digits
    return most


def sweep_lines(sweep: Sequence[dict]) -> str:
    """One indented line per point of a test-time threshold sweep.

    Args:
        sweep (sequence[dict]): points with ``threshold``, ``mIoU`` (%),
            ``ds_ratio``, ``backbone_gmacs`` and, optionally,
            ``model_gmacs``.

    Returns:
        str: ``  t=<threshold>: mIoU .., ds ratio .., backbone .. GMACs``
        (``, model .. GMACs`` when the point has it) lines joined by
        newlines.
    """
    digits = distinct_digits([p['threshold'] for p in sweep])
    return '\n'.join(
        f'  t={p["threshold"]:.{digits}g}: mIoU {p["mIoU"]:.2f}, ds ratio '
        f'{p["ds_ratio"]:.3f}, backbone {p["backbone_gmacs"]:.3f} GMACs' +
        (f', model {p["model_gmacs"]:.3f} GMACs' if 'model_gmacs' in p
         else '')
        for p in sweep)


def ablation_table(rows: Dict[str, dict], run_size: Sequence[int],
                   ref_size: Sequence[int] = (1024, 2048),
                   matched_label: str = 'common s',
                   baseline: str = None) -> str:
    """The letter's Table 1 in Markdown, one row per ablation row, each
    measurement as mean ± half-range over the seeds.

    Args:
        rows (dict): row name -> a dict with ``components`` (see
            :func:`mmselds.analysis.ablation.model_components`), ``letter``
            (its row of the letter's table or None) and the aggregated
            measurements of :func:`mmselds.analysis.ablation.aggregate_runs`
            (``mIoU``, ``matched_mIoU``, ``ds_ratio``, ``backbone_gmacs``
            spreads, ``mask_head_macs``, ``pooling_macs``,
            ``mask_head_macs_ref``, ``pooling_macs_ref``, ``seeds``).
        run_size (sequence[int]): (H, W) of the evaluated images.
        ref_size (sequence[int]): (H, W) of the second MACs column.
            Default: (1024, 2048), the letter's.
        matched_label (str): what the matched-ratio column is at, e.g.
            's = 0.853 (Prop. 2's)'. Default: 'common s'.
        baseline (str, optional): the row the MACs are compared to.
            Default: the first row.

    Returns:
        str: header, separator and one line per row, joined by newlines.
    """
    names = list(rows)
    baseline = baseline or names[0]
    base = rows[baseline]
    base_ref = base['mask_head_macs_ref'] + base['pooling_macs_ref']
    h, w = run_size
    rh, rw = ref_size
    lines = [
        f'| row | mask head | pooling | sparsity loss | mIoU | mIoU at '
        f'{matched_label} | ds ratio | mask head + pooling MMACs {h}x{w} | '
        f'mask head + pooling MMACs {rh}x{rw} | vs {baseline} | '
        'backbone GMACs | seeds | letter: mIoU, mask-head FLOPs |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for name in names:
        r, c = rows[name], rows[name]['components']
        run = (r['mask_head_macs'] + r['pooling_macs']) / 1e6
        ref = r['mask_head_macs_ref'] + r['pooling_macs_ref']
        vs = '-' if name == baseline else f'{ref / base_ref - 1:+.1%}'
        letter = r.get('letter')
        letter = '-' if not letter else \
            f'{letter["mIoU"]:.2f}, {letter["mask_head_flops"] / 1e6:.0f}M'
        lines.append(
            f'| {name} | {c["mask_head_desc"]} | {c["pooling"]} | '
            f'{loss_label(c)} | {format_spread(r["mIoU"])} | '
            f'{format_spread(r["matched_mIoU"])} | '
            f'{format_spread(r["ds_ratio"], 3)} | {run:.3f} | '
            f'{ref / 1e6:.1f} | {vs} | '
            f'{format_spread(r["backbone_gmacs"], 3)} | '
            f'{len(r["seeds"])} | {letter} |')
    return '\n'.join(lines)


def ablation_curve_lines(rows: Dict[str, dict]) -> str:
    """Per sweep ratio, one line with every row's mIoU (mean ± half-range
    over the seeds) and which pairs differ by more than the spread.

    Args:
        rows (dict): row name -> a dict with ``curve`` (see
            :func:`mmselds.analysis.ablation.aggregate_runs`); every row
            swept over the same ratios.
    """
    names = list(rows)
    lines = []
    for i, point in enumerate(rows[names[0]]['curve']):
        cells = [f'{n} {format_spread(rows[n]["curve"][i]["mIoU"])}'
                 for n in names]
        apart = [f'{a} vs {b}' for j, a in enumerate(names)
                 for b in names[j + 1:]
                 if beyond_spread(rows[a]['curve'][i]['mIoU'],
                                  rows[b]['curve'][i]['mIoU'])]
        judged = has_spread(*(rows[n]['curve'][i]['mIoU'] for n in names))
        lines.append(f'  s={point["ratio"]:.2f}: ' + ', '.join(cells) + '  '
                     + (f'[beyond the spread: {"; ".join(apart)}]' if apart
                        else '[all within the seed spread]' if judged
                        else '[one seed: no spread to judge by]'))
    return '\n'.join(lines)
