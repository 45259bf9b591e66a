from .complexity import (BackboneMacs, backbone_macs, backbone_output_shapes,
                         conv_macs, decode_head_macs, dense_prefix_macs,
                         dense_reference_macs, meta_macs, module_macs,
                         selective_stage_macs)

__all__ = [
    'BackboneMacs', 'backbone_macs', 'backbone_output_shapes', 'conv_macs',
    'decode_head_macs', 'dense_prefix_macs', 'dense_reference_macs',
    'meta_macs', 'module_macs', 'selective_stage_macs'
]
from .model_flops import heads_macs, is_selective, model_macs, reference_macs

__all__ += ['heads_macs', 'is_selective', 'model_macs', 'reference_macs']
from .calibration import (calibrated_threshold, mask_probabilities,
                          threshold_for_ratio)

__all__ += ['calibrated_threshold', 'mask_probabilities',
            'threshold_for_ratio']
