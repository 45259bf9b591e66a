from .mask_heads import (BaseMaskHead, CADMaskHead, DepthwiseMaskHead,
                         mask_head_macs)

__all__ = [
    'BaseMaskHead', 'CADMaskHead', 'DepthwiseMaskHead', 'mask_head_macs'
]
