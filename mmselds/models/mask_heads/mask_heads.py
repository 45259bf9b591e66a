"""Mask heads: stage-2 features -> one keep/down-sample decision per cell.

Shape shorthand: N batch, C stage-2 channels, h x w the OS8 map (even), the
cell grid is (h/2) x (w/2). Logit 1 is "down-sample".
"""
from typing import Optional

import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn


class BaseMaskHead(BaseModule):
    """Shared interface of the mask heads.

    Args:
        in_channels (int): channels of the stage-2 map. Default: 512.
        tau (float): Gumbel-softmax temperature in training. Default: 1.0.
        threshold (float): test-time threshold on P(down-sample); a cell is
            down-sampled when its probability exceeds it. Raising it keeps
            more cells at full resolution (more accurate, more FLOPs).
            Default: 0.5.
        init_cfg (dict, optional): mmengine initialisation config.
    """

    def __init__(self, in_channels: int = 512, tau: float = 1.0,
                 threshold: float = 0.5, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg)
        if tau <= 0:
            raise ValueError(f'tau must be positive, got {tau}')
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f'threshold must be in [0, 1], got {threshold}')
        self.in_channels = in_channels
        self.tau = tau
        self.threshold = threshold

    def layers(self, feat: Tensor) -> Tensor:
        raise NotImplementedError

    def init_weights(self) -> None:
        """Without an ``init_cfg``, start from near-zero logits after the
        parent's initialisation (e.g. the backbone's Kaiming init), so that
        P(down-sample) starts near 0.5 and training explores both choices."""
        super().init_weights()
        if self.init_cfg is None:
            last = [m for m in self.modules() if isinstance(m, nn.Conv2d)][-1]
            nn.init.normal_(last.weight, std=0.01)
            nn.init.zeros_(last.bias)

    def forward(self, feat: Tensor) -> Tensor:
        """(N, C, h, w) stage-2 map -> (N, 2, h/2, w/2) logits."""
        if feat.dim() != 4 or feat.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (N, '
                             f'{self.in_channels}, h, w) features, got '
                             f'{tuple(feat.shape)}')
        if feat.shape[2] % 2 or feat.shape[3] % 2:
            raise ValueError('the mask head needs an even OS8 map, got '
                             f'{feat.shape[2]}x{feat.shape[3]}')
        return self.layers(feat)

    @staticmethod
    def probability(logits: Tensor) -> Tensor:
        """(N, 1, h, w) P(down-sample)."""
        return logits.softmax(dim=1)[:, 1:2]

    def sample(self, logits: Tensor) -> Tensor:
        """(N, 1, h, w) mask, 1 = down-sample.

        Training: hard Gumbel-softmax with a straight-through gradient (the
        forward value is exactly 0 or 1). Evaluation: deterministic,
        ``P(down-sample) > threshold``.
        """
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=True,
                                    dim=1)[:, 1:2]
        return (self.probability(logits) > self.threshold).to(logits.dtype)


def conv_block(in_channels: int, out_channels: int,
               norm_cfg: Optional[dict] = None) -> nn.Sequential:
    """3x3 conv (+ norm) + ReLU."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1,
                        bias=norm_cfg is None)]
    if norm_cfg is not None:
        layers.append(build_norm_layer(norm_cfg, out_channels)[1])
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


def separable(in_channels: int, out_channels: int,
              norm_cfg: Optional[dict] = None,
              relu: bool = True) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1 (+ norm) (+ ReLU): a 3x3 conv's
    receptive field at ~1/9 + 1/C_out of its multiply-adds."""
    last = not relu
    layers = [nn.Conv2d(in_channels, in_channels, 3, padding=1,
                        groups=in_channels),
              nn.Conv2d(in_channels, out_channels, 1,
                        bias=norm_cfg is None or last)]
    if norm_cfg is not None and not last:
        layers.append(build_norm_layer(norm_cfg, out_channels)[1])
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@MODELS.register_module()
class CADMaskHead(BaseMaskHead):
    """The mask head of Content-Adaptive Downsampling (Hesse et al., CVPRW
    2023): conv3x3 C->128, ReLU, conv3x3 128->64, ReLU, maxpool 2,
    conv3x3 64->64, ReLU, conv3x3 64->2.

    Args:
        in_channels (int): stage-2 channels. Default: 512.
        channels (tuple[int, int]): hidden widths. Default: (128, 64).
        norm_cfg (dict, optional): a norm layer after each hidden conv
            (e.g. ``dict(type='BN')``); None keeps CAD's plain convs.
            Default: None.
        **kwargs: ``tau``, ``threshold``, ``init_cfg`` of
            :class:`BaseMaskHead`.
    """

    def __init__(self, in_channels: int = 512, channels=(128, 64),
                 norm_cfg: Optional[dict] = None, **kwargs):
        super().__init__(in_channels, **kwargs)
        c1, c2 = channels
        self.convs = nn.Sequential(
            conv_block(in_channels, c1, norm_cfg),
            conv_block(c1, c2, norm_cfg), nn.MaxPool2d(2),
            conv_block(c2, c2, norm_cfg), nn.Conv2d(c2, 2, 3, padding=1))

    def layers(self, feat: Tensor) -> Tensor:
        return self.convs(feat)


@MODELS.register_module()
class DepthwiseMaskHead(BaseMaskHead):
    """The light mask head (the letter's Prop. 1): :class:`CADMaskHead` with
    every 3x3 conv replaced by a depthwise 3x3 + pointwise 1x1 pair, so the
    receptive field is the same at ~12% of the multiply-adds.

    Args:
        in_channels (int): stage-2 channels. Default: 512.
        channels (tuple[int, int]): hidden widths. Default: (128, 64).
        norm_cfg (dict, optional): a norm layer after each hidden pointwise
            conv, as in MobileNets; keeps the thin layers' activations at
            unit scale so the mask's weak straight-through gradient trains
            them. None for plain convs. Default: ``dict(type='BN')``.
        **kwargs: ``tau``, ``threshold``, ``init_cfg`` of
            :class:`BaseMaskHead`.
    """

    def __init__(self, in_channels: int = 512, channels=(128, 64),
                 norm_cfg: Optional[dict] = dict(type='BN'), **kwargs):
        super().__init__(in_channels, **kwargs)
        c1, c2 = channels
        self.convs = nn.Sequential(
            separable(in_channels, c1, norm_cfg),
            separable(c1, c2, norm_cfg), nn.MaxPool2d(2),
            separable(c2, c2, norm_cfg), separable(c2, 2, relu=False))

    def layers(self, feat: Tensor) -> Tensor:
        return self.convs(feat)


def mask_head_macs(head: BaseMaskHead, height: int, width: int) -> int:
    """Multiply-adds of ``head`` on an (h, w) = (height, width) OS8 map,
    counted per conv as out_pixels * k * k * C_in / groups * C_out."""
    total, scale = 0, 1
    for m in head.modules():
        if isinstance(m, nn.MaxPool2d):
            scale *= 4
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += (height * width // scale) * k * \
                m.in_channels // m.groups * m.out_channels
    return total


__all__ = ['BaseMaskHead', 'CADMaskHead', 'DepthwiseMaskHead',
           'mask_head_macs']
