"""Core selective down-sampling ops; they import torch only."""
from .combine import (SelectiveOutputs, mixed_broadcast, mixed_cat,
                      mixed_global_avg_pool)
from .feature import MixedFeature, blend, upsample2
from .functional import (SparseTrainingError, batch_norm_affine,
                         fold_batch_norm, low_res_dilation, selective_apply,
                         selective_batch_norm, selective_conv2d,
                         selective_entrance_conv2d)
from .kernels import gather_linear, release_workspace, rows_linear
from .mask import (EXECUTION_MODES, CellMask, expected_ratio_mask,
                   random_cell_mask)
from .pooling import POOLING_MODES, SelectivePooling, as_pooling
from .runner import (clear_sparse_weights, dense_layers, flatten_layers,
                     is_conv_module, layers_macs, pooling_macs_per_value,
                     run_aspp, run_layers, run_residual_block, sparse_weights)

__all__ = [
    'CellMask', 'EXECUTION_MODES', 'MixedFeature', 'POOLING_MODES',
    'SelectivePooling', 'SparseTrainingError',
    'as_pooling', 'batch_norm_affine', 'blend',
    'clear_sparse_weights', 'dense_layers', 'sparse_weights',
    'expected_ratio_mask', 'flatten_layers', 'is_conv_module',
    'layers_macs', 'mixed_broadcast', 'mixed_cat',
    'mixed_global_avg_pool', 'SelectiveOutputs',
    'fold_batch_norm', 'gather_linear', 'low_res_dilation',
    'pooling_macs_per_value', 'random_cell_mask', 'release_workspace',
    'rows_linear', 'run_aspp', 'run_layers', 'run_residual_block',
    'selective_apply',
    'selective_batch_norm', 'selective_conv2d', 'selective_entrance_conv2d',
    'upsample2'
]
