"""ASPP head that keeps the backbone's selection (DESIGN §7)."""
from typing import List, Sequence, Union

from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.aspp_head import ASPPHead
from mmseg.registry import MODELS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmselds.ops import (MixedFeature, fold_batch_norm, mixed_broadcast,
                         mixed_cat, mixed_global_avg_pool, selective_apply,
                         selective_conv2d)

HEAD_POOL = 'stride'


def conv_module_selective(feat: MixedFeature, module: ConvModule,
                          pool=HEAD_POOL) -> MixedFeature:
    """An mmcv ``ConvModule`` (conv -> norm -> act; 1x1, or 3x3 with
    padding = dilation; stride 1, groups 1) on a mixed feature.

    In sparse execution an eval-mode BatchNorm is folded into the conv, as
    the backbone does; dense emulation calls the norm module on V.
    """
    conv = module.conv
    if tuple(module.order) != ('conv', 'norm', 'act'):
        raise NotImplementedError('selective ConvModules take the order '
                                  f"('conv', 'norm', 'act'), got "
                                  f'{module.order}')
    if type(conv) is not nn.Conv2d:
        raise NotImplementedError(f'selective ConvModules take a plain '
                                  f'nn.Conv2d, got {type(conv).__name__}')
    k, d = conv.kernel_size[0], conv.dilation[0]
    pad = 0 if k == 1 else d
    if conv.kernel_size != (k, k) or conv.stride != (1, 1) \
            or conv.groups != 1 or conv.padding != (pad, pad) \
            or conv.dilation != (d, d) or conv.padding_mode != 'zeros':
        raise NotImplementedError(
            'selective ConvModules take 1x1 or 3x3 convs with stride 1, '
            f'groups 1 and zero padding = dilation, got {conv}')
    weight, bias = conv.weight, conv.bias
    norm = module.norm if module.with_norm else None
    if norm is not None and not isinstance(norm, _BatchNorm):
        raise NotImplementedError(f'selective ConvModules take BatchNorm '
                                  f'norms, got {type(norm).__name__}')
    if feat.execution == 'sparse' and norm is not None \
            and not norm.training:
        weight, bias = fold_batch_norm(weight, bias, norm)
        norm = None
    out = selective_conv2d(feat, weight, bias, d if k == 3 else 1, pool=pool)
    if norm is not None:
        out = selective_apply(out, norm)
    if module.with_activation:
        act = module.activate
        # activations are element-wise: apply them to the stored values
        out = selective_apply(out, act) if isinstance(act, nn.ReLU) \
            else out.map(act)
    return out


@MODELS.register_module()
class SelDSASPPHead(ASPPHead):
    """mmseg's ``ASPPHead`` run on the backbone's mixed-resolution output.

    Same arguments and parameter names as ``ASPPHead``, so mmseg DeepLabV3
    checkpoints load. When its input carries ``mixed`` (a
    :class:`~mmselds.ops.SelectiveOutputs` from ``SelDSResNetV1c``, through
    ``SelectivePoolingNeck`` or directly) every layer follows DESIGN §3 under
    the backbone's selection:

    * ASPP branches: the 1x1 branch point-wise; a 3x3 branch of rate r reads
      V with rate r at full-resolution cells and runs the OS16 conv of rate
      r/2 at down-sampled cells (12/24/36 -> 6/12/18). The rates must be 1
      or even.
    * BatchNorm and activations point-wise; in sparse execution eval-mode
      BatchNorm is folded into the conv before it, as in the backbone.
    * image pool: the mean of the densified map (a down-sampled cell weighs
      as its 4 pixels; sparse execution sums weighted rows and never
      densifies), then the 1x1 ConvModule, broadcast to every position.
    * channel concatenation under the same cells, the 3x3 bottleneck (rate
      1 at both resolutions), dropout (on the dense emulation data in
      training; identity in eval) and ``conv_seg``; the logits are densified
      at the end, at OS8.

    Where a down-sampled cell reads a full-resolution neighbour, the head
    pools that neighbour with ``'stride'`` pooling (its top-left pixel, as
    the OS16 network's stride-2 sampling does), whatever the backbone's
    pooling mode: ``adaptive`` pooling has learned weights per site and the
    head has none of its own. With every cell at full resolution the head
    is ``ASPPHead`` on the OS8 map; with every cell down-sampled it is
    ``ASPPHead`` with halved rates on the OS16 map, nearest-upsampled.

    Without ``mixed`` (a dense backbone) it is exactly ``ASPPHead``.
    Training runs the dense emulation (the backbone's ``execution``), so the
    straight-through mask also receives gradient through the head.
    """

    def __init__(self, dilations: Sequence[int] = (1, 6, 12, 18), **kwargs):
        super().__init__(dilations=dilations, **kwargs)
        for d in self.dilations:
            if d > 1 and d % 2:
                raise ValueError(
                    f'SelDSASPPHead dilations must be 1 or even (the OS16 '
                    f'conv of down-sampled cells uses half of it), got '
                    f'{tuple(self.dilations)}')

    # ----------------------------------------------------------- selection
    def _mixed_input(self, inputs: Union[List[Tensor], tuple]
                     ) -> Union[MixedFeature, None]:
        mixed = getattr(inputs, 'mixed', None)
        if mixed is None:
            return None
        if not isinstance(mixed, MixedFeature):
            raise ValueError('inputs.mixed must be a MixedFeature, got '
                             f'{type(mixed).__name__}')
        if self.input_transform is not None:
            raise ValueError('SelDSASPPHead reads one mixed feature: '
                             'input_transform must be None, got '
                             f'{self.input_transform!r}')
        if self.in_index % len(inputs) != len(inputs) - 1:
            raise ValueError(
                f'SelDSASPPHead reads the last stage (the mixed feature), but'
                f' in_index={self.in_index} picks output {self.in_index} of '
                f'{len(inputs)}')
        if tuple(mixed.shape) != tuple(inputs[-1].shape):
            raise ValueError(
                f'the mixed feature {tuple(mixed.shape)} is not the last '
                f'output {tuple(inputs[-1].shape)} densified')
        if mixed.channels != self.in_channels:
            raise ValueError(f'the mixed feature has {mixed.channels} '
                             f'channels, in_channels={self.in_channels}')
        return mixed

    def _forward_mixed(self, x: MixedFeature) -> MixedFeature:
        pooled = mixed_global_avg_pool(x)  # (N, C, 1, 1)
        image = self.image_pool[1](pooled)  # the 1x1 ConvModule, as mmseg
        outs = [mixed_broadcast(image, x.cells, HEAD_POOL)]
        outs += [conv_module_selective(x, m) for m in self.aspp_modules]
        return conv_module_selective(mixed_cat(outs), self.bottleneck)

    def _cls_seg_mixed(self, feat: MixedFeature) -> MixedFeature:
        if self.dropout is not None and self.dropout.training:
            if feat.execution == 'sparse':
                raise RuntimeError(
                    'SelDSASPPHead applies dropout in dense emulation only: '
                    'train with execution="dense" (or "auto"), or put the '
                    'head in eval mode')
            feat = feat.map(self.dropout)
        return selective_conv2d(feat, self.conv_seg.weight,
                                self.conv_seg.bias, pool=HEAD_POOL)

    def forward(self, inputs):
        """Logits (N, num_classes, H, W) at the input's OS8 resolution."""
        mixed = self._mixed_input(inputs)
        if mixed is None:
            return super().forward(inputs)
        feat = mixed.new(mixed.data, HEAD_POOL)
        return self._cls_seg_mixed(self._forward_mixed(feat)).densify()
