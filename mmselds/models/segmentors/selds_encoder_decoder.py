from typing import List, Optional, Sequence

import torch
from mmengine.logging import MessageHub
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor


def check_slide_crop(test_cfg) -> None:
    """Slide inference feeds the backbone crops of ``test_cfg.crop_size``
    (smaller images whole, padded by ``size_divisor``): a ``ValueError``
    naming ``crop_size`` unless both sides are multiples of 16, the
    selective backbone's 2x2 cells of the OS8 map."""
    crop = test_cfg.get('crop_size')
    try:
        h, w = (int(c) for c in crop)
    except (TypeError, ValueError):
        raise ValueError(f'test_cfg: slide inference needs crop_size=(h, w), '
                         f'got {crop!r}') from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        fit = tuple(max(16, -(-c // 16) * 16) for c in (h, w))
        raise ValueError(
            f'test_cfg: crop_size={tuple(crop)} for slide inference; a '
            'selective backbone needs crops whose sides are multiples of 16 '
            f'(2x2 cells of the OS8 map): e.g. crop_size={fit}')


@MODELS.register_module()
class SelDSEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` for a selective down-sampling backbone.

    Adds the sparsity loss (``loss_sparsity``) to the losses and logs the
    down-sampling ratio as ``ds_ratio`` (no ``loss`` in the key, so mmengine
    does not train on it). ``predict`` stores each image's ratio in its data
    sample's metainfo (``ds_ratio``, averaged over the forwards of slide
    inference) for :class:`DownsampleRatioMetric`.

    Args:
        sparsity_loss (dict, optional): config of a loss on the mask, e.g.
            ``dict(type='SparsityLoss', mode='target', target=0.5)``; None
            trains the mask head by the task loss alone.
            Default: the target loss with target 0.5.
        train_only (Sequence[str], optional): train only the modules with
            these names (e.g. ``('backbone.mask_head', 'backbone.pooling')``);
            every other parameter is frozen and every other module kept in
            eval mode (BatchNorm statistics and dropout included).
            Default: None (train everything).
        **kwargs: the arguments of ``EncoderDecoder``.
    """

    def __init__(self,
                 sparsity_loss: Optional[dict] = dict(
                     type='SparsityLoss', mode='target', target=0.5),
                 train_only: Optional[Sequence[str]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not hasattr(self.backbone, 'last_mask'):
            raise TypeError(f'{type(self).__name__} needs a selective '
                            'down-sampling backbone (e.g. SelDSResNetV1c), '
                            f'got {type(self.backbone).__name__}')
        self.sparsity_loss = MODELS.build(sparsity_loss) \
            if sparsity_loss else None
        self.train_only = tuple(train_only or ())
        if self.train_only:
            names = dict(self.named_modules())
            unknown = [p for p in self.train_only if p not in names]
            if unknown:
                raise ValueError(f'train_only names unknown modules {unknown}')
            for name, param in self.named_parameters():
                param.requires_grad_(self._trainable(name))
        self._masks: List[Tensor] = []
        if (self.test_cfg or {}).get('mode') == 'slide':
            check_slide_crop(self.test_cfg)

    def slide_inference(self, inputs: Tensor,
                        batch_img_metas: List[dict]) -> Tensor:
        check_slide_crop(self.test_cfg)  # test_cfg may change after build
        return super().slide_inference(inputs, batch_img_metas)

    def _trainable(self, name: str) -> bool:
        return any(name == p or name.startswith(p + '.')
                   for p in self.train_only)

    def train(self, mode: bool = True):
        # the backbone's sparse-execution check once train_only froze
        # the modules it does not train
        checks = hasattr(self.backbone, 'check_sparse_training')
        if checks:
            self.backbone.defer_sparse_check = True
        try:
            super().train(mode)
        finally:
            if checks:
                self.backbone.defer_sparse_check = False
        if mode and self.train_only:
            for name, module in self.named_modules():
                if not name or self._trainable(name) or any(
                        p.startswith(name + '.') for p in self.train_only):
                    continue  # trained, or holds a trained module
                module.eval()
        if checks:
            self.backbone.check_sparse_training()
        return self

    @staticmethod
    def check_finite(inputs: Tensor, data_samples: OptSampleList = None,
                     stage: str = 'inference') -> None:
        """Raise ``FloatingPointError`` if the images hold NaN or Inf, naming
        the images (their files where known) and, in training, the iteration.
        A non-finite pixel would otherwise silently give class 0 everywhere
        and a meaningless down-sampling mask."""
        finite = torch.isfinite(inputs).flatten(1).all(1)
        if bool(finite.all()):
            return
        bad = (~finite).nonzero().flatten().tolist()
        names = []
        for i in bad:
            meta = data_samples[i].metainfo if data_samples is not None \
                and i < len(data_samples) else {}
            names.append(str(meta.get('img_path', f'image {i} of the batch')))
        where = stage
        if stage == 'training':
            info = MessageHub.get_current_instance().get_info('iter')
            if info is not None:
                where = f'training iteration {int(info) + 1}'
        raise FloatingPointError(
            f'input images contain NaN or Inf ({where}): '
            f'{", ".join(names)}')

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        """Backbone, then neck; keeps the mask of the pass, which the
        backbone's outputs carry (``SelectiveOutputs.cells``)."""
        x = self.backbone(inputs)
        cells = getattr(x, 'cells', None)
        if cells is None:
            raise TypeError(
                f'{type(self.backbone).__name__} returned '
                f'{type(x).__name__} without the selection (cells): '
                f'{type(self).__name__} needs a selective backbone that '
                'returns SelectiveOutputs')
        self._masks.append(cells.mask)
        if self.with_neck:
            x = self.neck(x)
        return x

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        self.check_finite(inputs, data_samples, 'training')
        self._masks = []
        losses = super().loss(inputs, data_samples)
        mask = self._masks[-1]
        if self.sparsity_loss is not None:
            losses[self.sparsity_loss.loss_name] = self.sparsity_loss(mask)
        losses['ds_ratio'] = mask.detach().mean()
        return losses

    def predict(self, inputs: Tensor,
                data_samples: OptSampleList = None) -> SampleList:
        self.check_finite(inputs, data_samples)
        self._masks = []
        results = super().predict(inputs, data_samples)
        ratios = torch.stack([m.detach().float().mean((1, 2, 3))
                              for m in self._masks]).mean(0)
        for result, ratio in zip(results, ratios.tolist()):
            result.set_metainfo(dict(ds_ratio=ratio))
        self._masks = []
        return results
