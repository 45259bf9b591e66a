from .calibration import (build_calibration_loader, mask_probabilities,
                          threshold_for_ratio)
from .complexity import (BackboneMacs, backbone_macs, backbone_output_shapes,
                         conv_macs, decode_head_macs, dense_prefix_macs,
                         dense_reference_macs, meta_macs, module_macs,
                         selective_stage_macs)
from .model_flops import (has_selective_head, heads_macs, is_selective,
                          model_macs, reference_macs)

__all__ = [
    'BackboneMacs', 'backbone_macs', 'backbone_output_shapes',
    'build_calibration_loader',
    'conv_macs', 'decode_head_macs',
    'dense_prefix_macs', 'dense_reference_macs', 'has_selective_head',
    'heads_macs', 'is_selective',
    'mask_probabilities', 'meta_macs', 'model_macs', 'module_macs',
    'reference_macs', 'selective_stage_macs', 'threshold_for_ratio'
]
