"""Per-image multiply-adds of a whole segmentor (backbone parts and heads),
shared by ``tools/analysis_tools/get_flops.py``, ``benchmark.py`` and the
demo."""
from typing import Dict, Optional, Sequence, Tuple

from torch import nn

from .complexity import (DENSE_STRIDES, backbone_macs, backbone_output_shapes,
                         decode_head_macs, dense_reference_macs, meta_macs)


def is_selective(model: nn.Module) -> bool:
    return hasattr(model.backbone, 'mask_head')


def heads_macs(model: nn.Module, input_size: Tuple[int, int],
               stride: Optional[int] = None) -> Dict[str, int]:
    """MACs of the decode and auxiliary heads on backbone outputs of an
    (H, W) input: at the backbone's own strides, or, with ``stride`` 8 or
    16, at an OS8 or OS16 network's (the dense twins of a selective
    model)."""
    strides = None if stride is None else DENSE_STRIDES[stride]
    shapes = backbone_output_shapes(model.backbone, input_size, strides)
    out = dict(decode_head=decode_head_macs(model.decode_head, shapes))
    if getattr(model, 'auxiliary_head', None) is not None:
        aux = model.auxiliary_head
        heads = aux if isinstance(aux, nn.ModuleList) else [aux]
        out['auxiliary_head'] = sum(decode_head_macs(h, shapes)
                                    for h in heads)
    return out


def has_selective_head(model: nn.Module) -> bool:
    """A decode head that follows the backbone's mask (``SelDSASPPHead``
    behind a selective backbone)."""
    from mmselds.models.decode_heads import SelDSASPPHead
    return is_selective(model) and isinstance(model.decode_head,
                                              SelDSASPPHead)


def model_macs(model: nn.Module, input_size: Tuple[int, int],
               ratios: Sequence[float] = (0.0, )) -> Dict[str, float]:
    """Per-image MACs by part: backbone parts (selective backbones: stem +
    stages 1-2, stages 3-4 full-resolution and down-sampled, mask head,
    pooling), ``backbone``, ``decode_head``, ``auxiliary_head`` and
    ``total`` (backbone + decode head: the inference cost; the auxiliary head
    is training-only). ``ratios``: the down-sampling ratio of each image."""
    out: Dict[str, float] = {}
    if is_selective(model):
        parts = backbone_macs(model.backbone, input_size, ratios)
        out.update(stem_stages12=parts.stem_stages12,
                   stages34_full=parts.stages34_full,
                   stages34_down=parts.stages34_down,
                   mask_head=parts.mask_head, pooling=parts.pooling,
                   backbone=parts.total)
    else:
        out['backbone'] = meta_macs(model.backbone,
                                    (1, 3) + tuple(input_size))[0]
    out.update(heads_macs(model, input_size))
    if has_selective_head(model):
        # counted by the head's layers under the mask, as the backbone's
        _, h, w = backbone_output_shapes(model.backbone, input_size)[-1]
        cells = h * w // 4
        low = sum(round(r * cells) for r in ratios) / len(ratios)
        out['decode_head'] = sum(model.decode_head.selective_macs(
            4 * (cells - low), low).values())
    out['total'] = out['backbone'] + out['decode_head']
    return out


def reference_macs(model: nn.Module, input_size: Tuple[int, int]
                   ) -> Dict[str, Dict[str, float]]:
    """Backbone and decode-head MACs of the dense OS8 and OS16 networks with
    this model's backbone depth and widths and its heads."""
    backbones = dense_reference_macs(model.backbone, input_size)
    out = {}
    for name, stride in (('OS8', 8), ('OS16', 16)):
        head = heads_macs(model, input_size, stride)['decode_head']
        out[name] = dict(backbone=backbones[name], decode_head=head,
                         total=backbones[name] + head)
    return out
