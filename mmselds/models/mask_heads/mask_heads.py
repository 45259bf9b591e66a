"""Mask heads: stage-2 features -> one keep/down-sample decision per cell.

Shape shorthand: N batch, C stage-2 channels, h x w the OS8 map (even), the
cell grid is (h/2) x (w/2). Logit 1 is "down-sample".
"""
import math
import numbers
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmselds.ops import expected_ratio_mask


class BaseMaskHead(BaseModule):
    """Shared interface of the mask heads.

    Training samples the mask with a hard Gumbel-softmax. Evaluation is
    deterministic, and by default down-samples the fraction of cells that
    training did (see :meth:`decide`); no calibration step is needed.

    Args:
        in_channels (int): channels of the stage-2 map. Default: 512.
        tau (float): Gumbel-softmax temperature in training. Default: 1.0.
        threshold (float, optional): an explicit test-time threshold on
            P(down-sample): a cell is down-sampled when its probability
            exceeds it. Raising it keeps more cells at full resolution (more
            accurate, more FLOPs). It overrides the checkpoint's calibrated
            threshold and the expected-ratio rule. None (default) leaves the
            decision to the checkpoint (see :meth:`decide`).
        ratio_momentum (float): momentum of the running mean of the training
            ratio kept in the ``trained_ratio`` buffer (a plain mean over the
            first ``1 / ratio_momentum`` iterations). The default 0.2 lags
            the training ratio by about as much as the 10-iteration window
            of mmengine's log. Default: 0.2.
        init_cfg (dict, optional): mmengine initialisation config.

    Buffers (saved in checkpoints):
        trained_ratio: running mean of the down-sampling ratio of the
            training-time Gumbel samples (NaN before training).
        calibrated_threshold: a threshold set by
            ``tools/misc/calibrate_mask.py`` (NaN: none).
        ratio_updates: training forwards counted into ``trained_ratio``.
    """

    def __init__(self, in_channels: int = 512, tau: float = 1.0,
                 threshold: Optional[float] = None,
                 ratio_momentum: float = 0.2,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg)
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real) \
                or not math.isfinite(tau) or tau <= 0:
            raise ValueError(f'tau must be a positive number, got {tau!r}')
        if not 0 < ratio_momentum <= 1:
            raise ValueError('ratio_momentum must be in (0, 1], got '
                             f'{ratio_momentum}')
        self.in_channels = in_channels
        self.tau = tau
        self.threshold = threshold
        self.ratio_momentum = ratio_momentum
        nan = torch.tensor(float('nan'))
        self.register_buffer('trained_ratio', nan.clone())
        self.register_buffer('calibrated_threshold', nan.clone())
        self.register_buffer('ratio_updates', torch.tensor(0))

    @property
    def threshold(self) -> Optional[float]:
        """The explicit test-time threshold (None: the checkpoint decides)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: Optional[float]) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Real)\
                    or not 0.0 <= value <= 1.0:
                raise ValueError('threshold must be None or a number in '
                                 f'[0, 1], got {value!r}')
            value = float(value)
        self._threshold = value

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
        """(N, C, h, w) stage-2 map -> (N, 2, h/2, w/2) logits, float32
        when the layers compute in float16 / bfloat16 (AMP): the decision
        compares P(down-sample) with a calibrated threshold near 0.5, and
        training's Gumbel noise drawn in float16 is infinite for an
        exponential sample that rounds to 0 (3 in 1e8 draws; a Cityscapes
        schedule draws ~1e9), which makes the mask NaN."""
        if feat.dim() != 4 or feat.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (N, '
                             f'{self.in_channels}, h, w) features, got '
                             f'{tuple(feat.shape)}')
        if feat.shape[2] % 2 or feat.shape[3] % 2:
            raise ValueError('the mask head needs an even OS8 map, got '
                             f'{feat.shape[2]}x{feat.shape[3]}')
        logits = self.layers(feat)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if not bool(torch.isfinite(logits.detach()).all()):
            raise FloatingPointError(
                f'{type(self).__name__} produced NaN or Inf logits: the '
                'stage-2 features or the weights are not finite')
        return logits

    @staticmethod
    def probability(logits: Tensor) -> Tensor:
        """(N, 1, h, w) P(down-sample)."""
        return logits.softmax(dim=1)[:, 1:2]

    def sample(self, logits: Tensor) -> Tensor:
        """(N, 1, h, w) mask, 1 = down-sample.

        Training: hard Gumbel-softmax with a straight-through gradient (the
        forward value is exactly 0 or 1); its ratio is tracked in
        ``trained_ratio``. Evaluation: :meth:`decide`.
        """
        if self.training:
            mask = F.gumbel_softmax(logits, tau=self.tau, hard=True,
                                    dim=1)[:, 1:2]
            self._track_ratio(mask)
            return mask
        return self.decide(logits)

    @torch.no_grad()
    def _track_ratio(self, mask: Tensor) -> None:
        # on the device, without reading a value back (no GPU sync per
        # training step): a plain mean over the first 1 / momentum updates,
        # the first one replacing the initial NaN
        ratio = mask.detach().float().mean()
        self.ratio_updates += 1
        weight = self.ratio_updates.reciprocal().clamp(min=self.ratio_momentum)
        self.trained_ratio.copy_(torch.where(
            self.ratio_updates == 1, ratio,
            torch.lerp(self.trained_ratio, ratio, weight)))

    def test_threshold(self) -> Optional[float]:
        """The threshold evaluation uses: the explicit ``threshold``, else a
        calibrated one carried by the checkpoint, else None (the
        expected-ratio rule)."""
        if self.threshold is not None:
            return self.threshold
        calibrated = float(self.calibrated_threshold)
        if math.isnan(calibrated):
            return None
        if not 0.0 <= calibrated <= 1.0:
            raise ValueError(
                f'the checkpoint\'s calibrated threshold (buffer '
                f'calibrated_threshold of {type(self).__name__}) is '
                f'{calibrated:g}, not a probability in [0, 1]: recalibrate '
                'it (tools/misc/calibrate_mask.py) or clear it (--clear)')
        return calibrated

    def decision_rule(self) -> str:
        """A one-line description of the evaluation-time decision."""
        if self.threshold is not None:
            return f'P(down-sample) > {self.threshold:g} (explicit threshold)'
        t = self.test_threshold()
        if t is not None:
            return f'P(down-sample) > {t:.4g} (calibrated threshold)'
        return ('expected ratio: per image, the round(mean(P) * cells) cells '
                'of highest P(down-sample)')

    def decide(self, logits: Tensor) -> Tensor:
        """Deterministic (N, 1, h, w) mask for evaluation.

        With a threshold (:meth:`test_threshold`), ``P > threshold``.
        Otherwise the expected-ratio rule
        (:func:`mmselds.ops.expected_ratio_mask`): each image down-samples
        the ``mean(P)`` fraction of its cells with the highest P, which is
        the expected ratio of training's Gumbel samples. A fixed 0.5
        threshold does not do that: after training P often sits just above
        0.5 almost everywhere, and every cell would be down-sampled.
        """
        prob = self.probability(logits)
        threshold = self.test_threshold()
        if threshold is None:
            return expected_ratio_mask(prob)
        return (prob > threshold).to(logits.dtype)


def hidden_widths(channels, cls: str) -> Tuple[int, int]:
    """``channels`` as the two hidden widths of a mask head, or a
    ``ValueError`` that names the argument."""
    if isinstance(channels, (str, bytes)) or not hasattr(
            channels, '__len__') or len(channels) != 2 or not all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool)
            and c > 0 for c in channels):
        raise ValueError(f'{cls}: channels must be two positive hidden '
                         f'widths (c1, c2), e.g. (128, 64), got {channels!r}')
    return int(channels[0]), int(channels[1])


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
        c1, c2 = hidden_widths(channels, type(self).__name__)
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
        c1, c2 = hidden_widths(channels, type(self).__name__)
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
