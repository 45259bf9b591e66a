"""Cost, timing, calibration, figures and tables of selective models.

Importing this package needs torch only: ``timing``, ``calibration``,
``plots`` and ``report`` import no mm* package (their functions that need
one import it when called), and the multiply-add counts of ``complexity``
and ``model_flops``, which need mmseg's modules, are imported on first
use (``from mmselds.analysis import backbone_macs`` works as before).
"""
import importlib

from .calibration import (build_calibration_loader, mask_probabilities,
                          threshold_for_ratio)
from .plots import plot_cost_accuracy, plot_ratios
from .report import results_table, sweep_lines
from .timing import median, time_call, time_interleaved

# name -> submodule, for the names whose modules import mmseg
_LAZY = dict.fromkeys(
    ('BackboneMacs', 'backbone_macs', 'backbone_output_shapes', 'conv_macs',
     'decode_head_macs', 'dense_prefix_macs', 'dense_reference_macs',
     'meta_macs', 'module_macs', 'selective_stage_macs'), 'complexity')
_LAZY.update(dict.fromkeys(
    ('has_selective_head', 'heads_macs', 'is_selective', 'model_macs',
     'reference_macs'), 'model_flops'))

__all__ = [
    'BackboneMacs', 'backbone_macs', 'backbone_output_shapes',
    'build_calibration_loader',
    'conv_macs', 'decode_head_macs',
    'dense_prefix_macs', 'dense_reference_macs', 'has_selective_head',
    'heads_macs', 'is_selective',
    'mask_probabilities', 'median', 'meta_macs', 'model_macs',
    'module_macs', 'plot_cost_accuracy', 'plot_ratios',
    'reference_macs', 'results_table', 'selective_stage_macs',
    'sweep_lines', 'threshold_for_ratio', 'time_call', 'time_interleaved'
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(
            f'module {__name__!r} has no attribute {name!r}')
    module = importlib.import_module(f'{__name__}.{_LAZY[name]}')
    return getattr(module, name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
