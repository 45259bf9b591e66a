"""The mmseg layer: registers mmselds' modules into ``mmseg.registry``."""
from mmseg.registry import MODELS

from mmselds.ops import SelectivePooling
from .backbones import SelDSResNetV1c
from .decode_heads import SelDSASPPHead
from .losses import SparsityLoss
from .mask_heads import (BaseMaskHead, CADMaskHead, DepthwiseMaskHead,
                         mask_head_macs)
from .necks import SelectivePoolingNeck
from .segmentors import SelDSEncoderDecoder

MODELS.register_module(module=SelectivePooling)

__all__ = [
    'BaseMaskHead', 'CADMaskHead', 'DepthwiseMaskHead', 'SelDSASPPHead',
    'SelDSEncoderDecoder', 'SelDSResNetV1c', 'SelectivePooling',
    'SelectivePoolingNeck', 'SparsityLoss', 'mask_head_macs'
]
