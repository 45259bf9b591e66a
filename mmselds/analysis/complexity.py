"""Multiply-adds (MACs) that a selective model executes per image.

mmengine's counter traces one path and counts masked work as dense, so it
cannot measure a data-dependent model. Here stages 3-4 are counted per
layer from the mask (DESIGN I4): full-resolution positions x dense cost +
down-sampled cells x OS16 cost, plus the mask head and the pooling. Dense
parts (stem, stages 1-2, heads) are counted by ``torch``'s FLOP counter on
the real modules. Counts are multiply-adds of convolutions and matmuls
(adaptive and average pooling count 4 per pooled value); BatchNorm, ReLU,
additions and up-sampling are not counted.
"""
import copy
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmselds.models.backbones.selds_resnet import dense_stages
from mmselds.models.mask_heads import mask_head_macs

# stage strides of mmseg's dense DeepLabV3 at output stride 8 and 16
DENSE_STRIDES = {8: (1, 2, 1, 1), 16: (1, 2, 2, 1)}


def module_macs(module: nn.Module, *inputs) -> int:
    """MACs of one forward of ``module`` (torch's FLOP counter / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def meta_macs(module: nn.Module, *shapes: Tuple[int, ...]):
    """(MACs, output) of a dense module on inputs of these shapes, run on
    the meta device: shapes only, no arithmetic, whatever the input size."""
    meta = copy.deepcopy(module).to('meta')
    meta.eval()  # mmseg's ResNet.train() returns None: do not chain
    inputs = [torch.zeros(s, device='meta') for s in shapes]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = meta(*inputs)
    return counter.get_total_flops() // 2, out


def conv_macs(conv: nn.Conv2d, positions: int) -> int:
    kh, kw = conv.kernel_size
    return positions * kh * kw * conv.in_channels // conv.groups * \
        conv.out_channels


@dataclass
class BackboneMacs:
    """Per-image MACs of a selective backbone, by part."""
    stem_stages12: float = 0
    stages34_full: float = 0
    stages34_down: float = 0
    mask_head: float = 0
    pooling: float = 0

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def __add__(self, other: 'BackboneMacs') -> 'BackboneMacs':
        return BackboneMacs(*(getattr(self, f.name) + getattr(other, f.name)
                              for f in fields(self)))

    def scale(self, factor: float) -> 'BackboneMacs':
        return BackboneMacs(*(getattr(self, f.name) * factor
                              for f in fields(self)))


class _DensePrefix(nn.Module):
    """Stem and stages 1-2 of a ResNet (always dense)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return dense_stages(self.backbone, x)[-1]


def dense_prefix_macs(backbone: nn.Module, input_size: Tuple[int, int]
                      ) -> Tuple[int, Tuple[int, int]]:
    """(MACs of the stem and stages 1-2, (h, w) of the OS8 map)."""
    macs, out = meta_macs(_DensePrefix(backbone), (1, 3) + tuple(input_size))
    return macs, tuple(out.shape[2:])


def selective_stage_macs(backbone: nn.Module, os8: Tuple[int, int],
                         num_low: float) -> BackboneMacs:
    """Stages 3-4 of one image whose OS8 map is ``os8`` with ``num_low``
    down-sampled cells (float: an average), as the backbone's layers count
    them (``SelDSResNetV1c.selective_macs``)."""
    h, w = os8
    low = num_low
    full_px = 4 * (h * w // 4 - low)
    parts = backbone.selective_macs(full_px, low)
    return BackboneMacs(stages34_full=parts['full'],
                        stages34_down=parts['down'],
                        pooling=parts['pooling'])


def backbone_macs(backbone: nn.Module, input_size: Tuple[int, int],
                  ratios: Sequence[float]) -> BackboneMacs:
    """Mean per-image MACs for images with the given down-sampling ratios
    (the fraction of cells computed at OS16)."""
    prefix, os8 = dense_prefix_macs(backbone, input_size)
    cells = os8[0] * os8[1] // 4
    head = mask_head_macs(backbone.mask_head, *os8)
    total = BackboneMacs()
    for ratio in ratios:
        part = selective_stage_macs(backbone, os8, round(ratio * cells))
        part.stem_stages12, part.mask_head = prefix, head
        total = total + part
    return total.scale(1 / len(ratios))


def backbone_output_shapes(backbone: nn.Module, input_size: Tuple[int, int],
                           strides: Optional[Sequence[int]] = None
                           ) -> List[Tuple[int, int, int]]:
    """(C, h, w) of each ``out_indices`` output of an mmseg ``ResNet`` at
    its stage ``strides`` (default: the backbone's own; a selective
    backbone's are OS8's, (1, 2, 1, 1), its densified outputs' size; (1, 2,
    2, 1) gives the OS16 network's)."""
    _, (h, w) = dense_prefix_macs(backbone, input_size)
    strides = tuple(getattr(backbone, 'strides', DENSE_STRIDES[8])
                    if strides is None else strides)
    widths = [backbone.base_channels * 2**i * backbone.block.expansion
              for i in range(4)]
    f3, f4 = strides[2], strides[2] * strides[3]
    sizes = [(2 * h, 2 * w), (h, w), (-(-h // f3), -(-w // f3)),
             (-(-h // f4), -(-w // f4))]
    return [(widths[i], ) + sizes[i] for i in backbone.out_indices]


def decode_head_macs(head: nn.Module, in_shapes: Sequence[Tuple[int, ...]]
                     ) -> int:
    """MACs of a decode/auxiliary head on backbone outputs of these
    (C, h, w) shapes."""

    class Wrapper(nn.Module):

        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, *feats):
            return self.head(list(feats))

    return meta_macs(Wrapper(), *[(1, ) + tuple(s) for s in in_shapes])[0]


def dense_reference_macs(backbone: nn.Module, input_size: Tuple[int, int]
                         ) -> Dict[str, int]:
    """MACs of mmseg's dense ResNetV1c with the same depth and widths at
    OS8 (strides (1, 2, 1, 1)) and OS16 (strides (1, 2, 2, 1))."""
    from mmseg.models.backbones import ResNetV1c
    out = {}
    for os_, dilations in ((8, backbone.dilations), (16, (1, 1, 1, 2))):
        ref = ResNetV1c(depth=backbone.depth,
                        stem_channels=backbone.stem_channels,
                        base_channels=backbone.base_channels,
                        strides=DENSE_STRIDES[os_], dilations=dilations,
                        contract_dilation=backbone.contract_dilation,
                        multi_grid=backbone.multi_grid)
        out[f'OS{os_}'] = meta_macs(ref, (1, 3) + tuple(input_size))[0]
    return out
