"""Text summaries of evaluation results (Markdown tables, sweep lines)."""
from typing import Dict, Sequence


def results_table(results: Dict[str, dict]) -> str:
    """A Markdown table with mmseg's columns, one row per model.

    Args:
        results (dict): model name -> a dict with ``mIoU`` (%),
            ``ds_ratio`` (the down-sampling ratio, None for a dense model),
            ``backbone_gmacs`` and ``latency_ms`` (per image).

    Returns:
        str: the header, the separator and one row per model, in the order
        of ``results``, joined by newlines.
    """
    rows = ['| model | mIoU | ds ratio | backbone GMACs | CPU ms / image |',
            '|---|---|---|---|---|']
    for name, r in results.items():
        ratio = '-' if r['ds_ratio'] is None else f'{r["ds_ratio"]:.3f}'
        rows.append(f'| {name} | {r["mIoU"]:.2f} | {ratio} | '
                    f'{r["backbone_gmacs"]:.3f} | {r["latency_ms"]:.1f} |')
    return '\n'.join(rows)


def sweep_lines(sweep: Sequence[dict]) -> str:
    """One indented line per point of a test-time threshold sweep.

    Args:
        sweep (sequence[dict]): points with ``threshold``, ``mIoU`` (%),
            ``ds_ratio`` and ``backbone_gmacs``.

    Returns:
        str: ``  t=<threshold>: mIoU .., ds ratio .., backbone .. GMACs``
        lines joined by newlines.
    """
    return '\n'.join(
        f'  t={p["threshold"]:.4g}: mIoU {p["mIoU"]:.2f}, ds ratio '
        f'{p["ds_ratio"]:.3f}, backbone {p["backbone_gmacs"]:.3f} GMACs'
        for p in sweep)
