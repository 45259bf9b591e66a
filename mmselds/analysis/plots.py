"""Figures of benchmark results."""
from typing import List


def plot_ratios(rows: List[dict], path: str, title: str) -> None:
    """Time ratios to the optimised dense OS8 (``*_time_ratio``) and
    multiply-add ratios to dense OS8 against the down-sampling ratio s,
    backbone and whole model, with the optimised dense OS16 and the plain
    (unoptimised) OS8 as lines."""
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
