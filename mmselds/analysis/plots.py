"""Figures of benchmark and evaluation results (matplotlib, Agg backend,
imported when a figure is drawn)."""
from typing import Dict, List, Sequence, Union


def plot_ratios(rows: List[dict], path: str, title: str) -> None:
    """Time ratios to the optimised dense OS8 (``*_time_ratio``) and
    multiply-add ratios to dense OS8 against the down-sampling ratio s,
    backbone and whole model, with the optimised dense OS16 and the plain
    (unoptimised) OS8 as lines.

    Args:
        rows (list[dict]): benchmark rows, each with ``case`` ('s=<ratio>'
            for the selective model, 'OS16 opt', 'OS8'),
            ``backbone_time_ratio``, ``model_time_ratio``,
            ``backbone_flops_ratio`` and ``model_flops_ratio``.
        path (str): the image file to write.
        title (str): the figure's title.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sel = [r for r in rows if r['case'].startswith('s=')]
    s = [float(r['case'][2:]) for r in sel]
    os16 = next((r for r in rows if r['case'] == 'OS16 opt'), None)
    plain = next((r for r in rows if r['case'] == 'OS8'), None)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120, sharey=True)
    for ax, part in zip(axes, ('backbone', 'model')):
        ax.plot(s, [r[f'{part}_time_ratio'] for r in sel], 'o-',
                label='time / optimised OS8')
        ax.plot(s, [r[f'{part}_flops_ratio'] for r in sel], 's--',
                label='multiply-adds / OS8')
        if os16 is not None:
            ax.axhline(os16[f'{part}_time_ratio'], color='tab:green', lw=1,
                       label='optimised dense OS16')
        if plain is not None:
            ax.axhline(plain[f'{part}_time_ratio'], color='tab:gray', lw=1,
                       ls=':', label='plain mmseg OS8')
        ax.axhline(1.0, color='tab:red', lw=1, label='optimised dense OS8')
        ax.set_xlabel('down-sampling ratio s')
        ax.set_title('backbone' if part == 'backbone' else
                     'whole model (backbone + decode head)')
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('ratio to optimised dense OS8')
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# the dense references' markers; selective models take SELECTIVE_STYLES in
# turn (marker, colour)
COST_ACCURACY_MARKERS = (('OS8', '*', 'tab:red'), ('OS16', 's', 'tab:green'))
SELECTIVE_STYLES = (('D', 'tab:blue'), ('P', 'tab:purple'),
                    ('o', 'tab:orange'), ('v', 'tab:brown'))


def _group_labels(sweep: Sequence[dict], cost: str = 'backbone_gmacs'
                  ) -> List[tuple]:
    """[((x, y), [threshold labels])]: thresholds whose points (nearly)
    coincide share one label; x is the point's ``cost``."""
    labels = []
    for p in sweep:
        xy, name = (p[cost], p['mIoU']), f'{p["threshold"]:.3g}'
        near = [lab for lab in labels if abs(lab[0][0] - xy[0]) < 2e-3 and
                abs(lab[0][1] - xy[1]) < 0.1]
        if near:
            near[0][1].append(name)
        else:
            labels.append((xy, [name]))
    return labels


def plot_cost_accuracy(results: Dict[str, dict],
                       sweep: Union[Sequence[dict], Dict[str, Sequence[dict]]],
                       path: str,
                       xlabel: str = 'backbone GMACs per image',
                       ylabel: str = 'mIoU (%)',
                       cost: str = 'backbone_gmacs') -> None:
    """Cost against accuracy: each selective model's test-time threshold
    sweep as a line (each point labelled with its threshold), dense OS8,
    dense OS16 and each selective model's own rule as markers.

    Args:
        results (dict): 'OS8', 'OS16' and each selective model -> a dict
            with the ``cost`` key and ``mIoU`` (%).
        sweep (sequence[dict] | dict): the points of the sweep of the model
            'selective', or a dict selective model name -> its points; each
            point with ``threshold``, the ``cost`` key and ``mIoU``.
        path (str): the image file to write (e.g. a ``.png``).
        xlabel (str): x-axis label. Default: 'backbone GMACs per image'.
        ylabel (str): y-axis label. Default: 'mIoU (%)'.
        cost (str): the key of the x values in ``results`` and ``sweep``,
            e.g. ``'model_gmacs'`` for the whole model's multiply-adds.
            Default: 'backbone_gmacs'.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sweeps = sweep if isinstance(sweep, dict) else {'selective': sweep}
    if len(sweeps) > len(SELECTIVE_STYLES):
        raise ValueError(f'at most {len(SELECTIVE_STYLES)} selective models '
                         f'per figure, got {len(sweeps)}')
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    markers = list(COST_ACCURACY_MARKERS)
    for (name, points), (marker, color) in zip(sweeps.items(),
                                               SELECTIVE_STYLES):
        ax.plot([p[cost] for p in points], [p['mIoU'] for p in points],
                '.-', color=color,
                label=f'{name}, test-time threshold sweep')
        for xy, names in _group_labels(points, cost):
            ax.annotate(', '.join(names), xy, textcoords='offset points',
                        xytext=(4, -10), fontsize=7, color=color)
        markers.append((name, marker, color))
    for name, marker, color in markers:
        r = results[name]
        ax.plot(r[cost], r['mIoU'], marker, color=color,
                markersize=11 if marker == '*' else 8,
                label=f'{name} ({r["mIoU"]:.1f} mIoU)',
                markeredgecolor='black')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title('Cost vs accuracy: selective down-sampling vs dense')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_ablation(rows: Dict[str, dict], references: Dict[str, dict],
                  path: str, xlabel: str = 'backbone GMACs per image',
                  ylabel: str = 'mIoU (%)',
                  title: str = 'Ablation: cost vs accuracy') -> List[str]:
    """The ablation's cost/accuracy figure: one curve per row (its
    test-time threshold sweep, mean over the seeds, error bars mean ±
    half-range), each row's own test-time rule as a large marker, and the
    dense references as stars/squares. The legend gives each mIoU to two
    decimals (rows 0.03 apart must not read the same).

    Args:
        rows (dict): row name -> a dict with ``curve`` (points with
            ``backbone_gmacs`` and an ``mIoU`` spread: ``mean``,
            ``half_range``), ``backbone_gmacs`` and ``mIoU`` (spreads of the
            row's own rule), as
            :func:`mmselds.analysis.ablation.aggregate_runs` returns them.
        references (dict): e.g. 'OS8', 'OS16' -> ``backbone_gmacs`` and
            ``mIoU`` (%) of a dense model.
        path (str): the image file to write (e.g. a ``.png``).
        xlabel (str): x-axis label. Default: 'backbone GMACs per image'.
        ylabel (str): y-axis label. Default: 'mIoU (%)'.
        title (str): the figure's title.
    Returns:
        list[str]: the legend's entries.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colors = ('tab:orange', 'tab:purple', 'tab:blue', 'tab:brown',
              'tab:pink', 'tab:olive', 'tab:cyan')
    markers = ('o', 's', 'D', '^', 'v', 'P', 'X')
    fig, ax = plt.subplots(figsize=(9.6, 4.8), dpi=120)
    for i, (name, row) in enumerate(rows.items()):
        color = colors[i % len(colors)]
        curve = sorted(row['curve'], key=lambda p: p['backbone_gmacs'])
        ax.errorbar([p['backbone_gmacs'] for p in curve],
                    [p['mIoU']['mean'] for p in curve],
                    yerr=[p['mIoU']['half_range'] for p in curve],
                    fmt='-', marker=markers[i % len(markers)], markersize=4,
                    color=color, capsize=2, lw=1.2,
                    label=f'{name}: threshold sweep')
        own_x, own_y = row['backbone_gmacs'], row['mIoU']
        ax.errorbar(own_x['mean'], own_y['mean'], xerr=own_x['half_range'],
                    yerr=own_y['half_range'], fmt=markers[i % len(markers)],
                    markersize=10, color=color, markeredgecolor='black',
                    capsize=3, label=f'{name}: own rule '
                    f'({own_y["mean"]:.2f} mIoU)')
    styles = dict(OS8=('*', 'tab:red', 13), OS16=('s', 'tab:green', 9))
    for name, ref in references.items():
        marker, color, size = styles.get(name, ('X', 'black', 9))
        ax.plot(ref['backbone_gmacs'], ref['mIoU'], marker, color=color,
                markersize=size, markeredgecolor='black',
                label=f'dense {name} ({ref["mIoU"]:.2f} mIoU)')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=7, loc='center left',
                       bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [t.get_text() for t in legend.get_texts()]
