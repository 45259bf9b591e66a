"""ASPP head that keeps the backbone's selection (DESIGN §7)."""
from typing import List, Sequence, Union

from mmseg.models.decode_heads.aspp_head import ASPPHead
from mmseg.registry import MODELS
from torch import Tensor

from mmselds.ops import (MixedFeature, clear_sparse_weights, layers_macs,
                         release_workspace, run_aspp, run_layers)

HEAD_POOL = 'stride'


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
    def train(self, mode: bool = True) -> 'SelDSASPPHead':
        """As ``nn.Module.train``; drops the folded weights sparse inference
        keeps, as the selective backbone's ``train`` does."""
        super().train(mode)
        clear_sparse_weights(self)
        return self

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
        last = inputs.output_shape(-1) if hasattr(inputs, 'output_shape') \
            else tuple(inputs[-1].shape)
        if tuple(mixed.shape) != last:
            raise ValueError(
                f'the mixed feature {tuple(mixed.shape)} is not the last '
                f'output {last} densified')
        if mixed.channels != self.in_channels:
            raise ValueError(f'the mixed feature has {mixed.channels} '
                             f'channels, in_channels={self.in_channels}')
        return mixed

    def _forward_mixed(self, x: MixedFeature) -> MixedFeature:
        # image_pool[1]: the 1x1 ConvModule after the pooling, as mmseg
        return run_aspp(x, self.image_pool[1], self.aspp_modules,
                        self.bottleneck)

    def _cls_seg_layers(self) -> list:
        return [m for m in (self.dropout, self.conv_seg) if m is not None]

    def selective_macs(self, full_px: float, low: float) -> dict:
        """Multiply-adds of the head on one image with ``full_px``
        full-resolution pixels and ``low`` down-sampled cells, by part
        (``full``, ``down``, ``pooling``; the image-pool branch, one
        position per image, counts as ``full``), from the layers that run
        them (:func:`~mmselds.ops.layers_macs`)."""
        runs = [[m] for m in self.aspp_modules] + [[self.bottleneck],
                                                   self._cls_seg_layers()]
        macs = layers_macs([self.image_pool[1]], 1, 0)  # one position
        for layers in runs:
            part = layers_macs(layers, full_px, low, feature_pool=HEAD_POOL)
            for k in macs:
                macs[k] += part[k]
        return macs

    def forward(self, inputs):
        """Logits (N, num_classes, H, W) at the input's OS8 resolution."""
        mixed = self._mixed_input(inputs)
        if mixed is None:
            return super().forward(inputs)
        feat = mixed.new(mixed.data, HEAD_POOL)
        logits = run_layers(self._forward_mixed(feat),
                            self._cls_seg_layers()).densify()
        if feat.execution == 'sparse':
            release_workspace()  # as the backbone: hold it only in forward
        return logits
