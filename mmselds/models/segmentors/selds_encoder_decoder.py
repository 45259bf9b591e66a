from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from ...datasets.checks import check_labels


def fit_cells(sides) -> tuple:
    """Each side rounded up to a multiple of 16 (at least 16): the
    nearest size a selective backbone takes."""
    return tuple(max(16, -(-int(side) // 16) * 16) for side in sides)


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
        fit = fit_cells((h, w))
        raise ValueError(
            f'test_cfg: crop_size={tuple(crop)} for slide inference; a '
            'selective backbone needs crops whose sides are multiples of 16 '
            f'(2x2 cells of the OS8 map): e.g. crop_size={fit}')


def cell_pixels(mask: Tensor, size) -> Tensor:
    """(N, 1, H, W) float32 of an (N, 1, H/16, W/16) cell mask on the
    network input of size (H, W): each cell's value on its 16x16 pixels."""
    h, w = size
    pixels = mask.detach().float().repeat_interleave(16, 2)
    return pixels.repeat_interleave(16, 3)[..., :h, :w]


def to_original_size(mask: Tensor, meta: dict) -> Tensor:
    """A (1, 1, H, W) input-sized map taken to the image's original size
    as mmseg's ``postprocess_result`` takes the logits: padding removed,
    flip undone, resized to ``ori_shape`` (nearest, so cells keep their
    values; pixel centres as the logits' bilinear resize maps them)."""
    left, right, top, bottom = meta.get('img_padding_size',
                                        meta.get('padding_size', [0] * 4))
    H, W = mask.shape[2:]
    mask = mask[:, :, top:H - bottom, left:W - right]
    if meta.get('flip'):
        mask = mask.flip(dims=(3, ) if meta.get('flip_direction') ==
                         'horizontal' else (2, ))
    return F.interpolate(mask, size=tuple(meta['ori_shape'][:2]),
                         mode='nearest-exact')


def check_padding(data_preprocessor) -> None:
    """A ``ValueError`` naming the setting unless the sizes a
    ``SegDataPreProcessor`` pads to are multiples of 16 (2x2 cells of the
    OS8 map): ``size`` (training batches: the crop size),
    ``test_cfg.size`` and ``test_cfg.size_divisor``. Unset sizes pass
    (inputs are then checked by the backbone)."""
    def sides(value):
        try:
            return tuple(int(v) for v in value)
        except TypeError:
            return (int(value), )

    test_cfg = getattr(data_preprocessor, 'test_cfg', None) or {}
    for name, value in (('size', getattr(data_preprocessor, 'size', None)),
                        ('test_cfg.size', test_cfg.get('size')),
                        ('test_cfg.size_divisor',
                         test_cfg.get('size_divisor'))):
        if value is None or not any(v % 16 or v <= 0 for v in sides(value)):
            continue
        good = fit_cells(sides(value)) if 'divisor' not in name else 16
        raise ValueError(
            f'data_preprocessor.{name}={value!r}: inputs are padded to it, '
            'and a selective backbone needs sides that are multiples of 16 '
            f'(2x2 cells of the OS8 map): e.g. {name.split(".")[-1]}='
            f'{good!r}' + (' (and the crop_size of the training pipeline)'
                           if name == 'size' else ''))


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
        self._mask_map: Optional[Tensor] = None
        mode = (self.test_cfg or {}).get('mode', 'whole')
        if mode not in ('whole', 'slide'):
            raise ValueError(f"test_cfg: mode={mode!r}; inference is 'whole' "
                             "or 'slide' (with crop_size and stride)")
        if mode == 'slide':
            check_slide_crop(self.test_cfg)
        check_padding(self.data_preprocessor)

    def inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        self._mask_map = None
        seg_logits = super().inference(inputs, batch_img_metas)
        if self._mask_map is None:  # whole: the one forward's cells
            self._mask_map = cell_pixels(self._masks[-1], inputs.shape[2:])
        return seg_logits

    def slide_inference(self, inputs: Tensor,
                        batch_img_metas: List[dict]) -> Tensor:
        """mmseg's sliding-window inference (same windows, same logits),
        which also averages each window's mask over the pixels it covers
        into the input-sized mask of ``ds_mask``."""
        check_slide_crop(self.test_cfg)  # test_cfg may change after build
        h_stride, w_stride = self.test_cfg.stride
        h_crop, w_crop = self.test_cfg.crop_size
        n, _, h_img, w_img = inputs.size()
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = inputs.new_zeros((n, self.out_channels, h_img, w_img))
        masks = inputs.new_zeros((n, 1, h_img, w_img), dtype=torch.float32)
        count = inputs.new_zeros((n, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2 = min(h_idx * h_stride + h_crop, h_img)
                x2 = min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crop = inputs[:, :, y1:y2, x1:x2]
                batch_img_metas[0]['img_shape'] = crop.shape[2:]
                pad = (x1, w_img - x2, y1, h_img - y2)
                preds += F.pad(self.encode_decode(crop, batch_img_metas), pad)
                masks += F.pad(cell_pixels(self._masks[-1], crop.shape[2:]),
                               pad)
                count[:, :, y1:y2, x1:x2] += 1
        self._mask_map = masks / count
        return preds / count

    def _label_classes(self) -> int:
        """How many label values are classes: ``num_classes``, and 0/1 for
        a binary head with one output (mmseg's ``num_classes=1``)."""
        head = self.decode_head
        return max(head.num_classes, 2) if head.out_channels == 1 \
            else head.num_classes

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
        check_labels(data_samples, self._label_classes(),
                     self.decode_head.ignore_index)
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
        check_labels(data_samples, self._label_classes(),
                     self.decode_head.ignore_index, image_sizes=True)
        self._masks = []
        results = super().predict(inputs, data_samples)
        ratios = torch.stack([m.detach().float().mean((1, 2, 3))
                              for m in self._masks]).mean(0)
        for i, (result, ratio) in enumerate(zip(results, ratios.tolist())):
            result.set_metainfo(dict(ds_ratio=ratio))
            mask = self._mask_map[i:i + 1]
            if data_samples is not None:  # as postprocess_result does
                mask = to_original_size(mask, result.metainfo)
            result.ds_mask = PixelData(data=mask.reshape(mask.shape[-3:]))
        self._masks, self._mask_map = [], None
        return results
