"""ResNetV1c whose stages 3-4 run selective down-sampling (DESIGN §3)."""
from typing import Iterator, List, Optional, Tuple, Union

import torch
import torch.utils.checkpoint as cp
from mmseg.models.backbones.resnet import BasicBlock, Bottleneck, ResNetV1c
from mmseg.registry import MODELS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmselds.ops import (CellMask, MixedFeature, SelectiveOutputs,
                         SparseTrainingError, clear_sparse_weights,
                         dense_layers, layers_macs, pooling_macs_per_value,
                         release_workspace, run_residual_block)
from mmselds.ops.functional import SPARSE_TRAINING

EXECUTIONS = ('auto', 'dense', 'sparse')
OS8_STRIDES = (1, 2, 1, 1)
ENTRANCE = 'layer3_entrance'


def main_path(block: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The residual branch of a block as (name, module) in order."""
    if isinstance(block, Bottleneck):
        names = ['conv1', 'norm1', 'relu', 'conv2', 'norm2', 'relu', 'conv3',
                 'norm3']
    elif isinstance(block, BasicBlock):
        names = ['conv1', 'norm1', 'relu', 'conv2', 'norm2']
    else:
        raise NotImplementedError(f'unsupported block {type(block).__name__}')
    return [(n, getattr(block, n)) for n in names]


def main_layers(block: nn.Module) -> List[nn.Module]:
    """The residual branch of a block as the layers to run, in order."""
    return [m for _, m in main_path(block)]


def is_3x3(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3)


def dense_stages(resnet: nn.Module, x: Tensor, folded: bool = False
                 ) -> List[Tensor]:
    """Stem and stages 1-2 of any mmseg ``ResNet``: [stage-1, stage-2].

    Shared by :class:`SelDSResNetV1c` (which always runs them dense) and the
    FLOP counter, which applies it to plain ``ResNetV1c`` references too.
    ``folded`` (inference) runs every conv with its eval-mode BatchNorm
    folded in (:func:`~mmselds.ops.dense_layers`); otherwise the modules
    run as they are.
    """
    if folded:
        stem = resnet.stem if resnet.deep_stem else \
            [resnet.conv1, resnet.norm1, resnet.relu]
        x = resnet.maxpool(dense_layers(x, stem))
    elif resnet.deep_stem:
        x = resnet.maxpool(resnet.stem(x))
    else:
        x = resnet.maxpool(resnet.relu(resnet.norm1(resnet.conv1(x))))
    outs = []
    for layer_name in resnet.res_layers[:2]:
        layer = getattr(resnet, layer_name)
        if folded:
            for block in layer:
                identity = x if block.downsample is None else \
                    dense_layers(x, block.downsample)
                x = dense_layers(x, main_layers(block), shortcut=identity)
        else:
            x = layer(x)
        outs.append(x)
    return outs


def check_input_size(size) -> Tuple[int, int]:
    """The (h, w) OS8 map of an (H, W) input to a selective backbone
    (``ceil(H / 8)``: each stride-2 layer of ``ResNetV1c`` rounds up), or a
    ``ValueError`` when it is not even (selective down-sampling works on
    2x2 cells of it). Multiples of 16 always pass."""
    H, W = (int(s) for s in size)
    h, w = -(-H // 8), -(-W // 8)
    if h % 2 or w % 2:
        raise ValueError(
            f'an input of {H}x{W} gives an OS8 map of {h}x{w}; selective '
            'down-sampling needs it even (2x2 cells): pad inputs to a '
            'multiple of 16 (SegDataPreProcessor size= for training, '
            'test_cfg=dict(size_divisor=16) for testing)')
    return h, w


@MODELS.register_module()
class SelDSResNetV1c(ResNetV1c):
    """ResNetV1c with mask-based selective down-sampling in stages 3-4.

    A mask head on the stage-2 output picks, per 2x2 cell of the OS8 map
    (16x16 input pixels), whether stages 3-4 compute it at OS8 (dilated) or
    at OS16 (one value per cell). All of ``ResNetV1c``'s arguments keep their
    meaning, and its parameter names are kept, so mmseg checkpoints load
    with only ``mask_head.*`` and ``pooling.*`` missing. The layout must be
    OS8: ``strides=(1, 2, 1, 1)`` with stages 3-4 dilated, e.g.
    ``dilations=(1, 1, 2, 4)``.

    Args:
        mask_head (dict): config of the mask predictor; ``in_channels``
            defaults to the stage-2 width. Default:
            ``dict(type='DepthwiseMaskHead')``.
        pooling (dict): config of the selective pooling, e.g.
            ``dict(type='SelectivePooling', mode='adaptive')``; one module
            (with its own weights in ``adaptive`` mode) per 3x3 conv input,
            plus one at the stage-3 entrance in pooling modes.
            Default: ``dict(type='SelectivePooling', mode='stride')``.
        execution (str): ``'auto'`` (dense emulation when training, sparse
            in eval), ``'dense'`` or ``'sparse'``; can be changed on a built
            model. Default: ``'auto'``.
        **kwargs: the arguments of ``ResNetV1c``.

    After a forward, ``last_mask`` (N, 1, H/16, W/16) holds the mask used
    (1 = down-sampled; carries the straight-through gradient in training),
    ``last_logits`` the mask head's logits, and ``last_ratio`` its mean.
    """

    def __init__(self,
                 mask_head: dict = dict(type='DepthwiseMaskHead'),
                 pooling: dict = dict(type='SelectivePooling', mode='stride'),
                 execution: str = 'auto',
                 **kwargs):
        super().__init__(**kwargs)
        self._check_layout()
        self.execution = execution
        self.defer_sparse_check = False
        width = self.base_channels * 2 * self.block.expansion
        for name, cfg, example in (
                ('mask_head', mask_head, "dict(type='DepthwiseMaskHead')"),
                ('pooling', pooling,
                 "dict(type='SelectivePooling', mode='avg')")):
            if not isinstance(cfg, dict):
                raise TypeError(f'{name} must be a config dict (e.g. '
                                f'{example}), got {cfg!r}')
        mask_head = dict(mask_head)
        mask_head.setdefault('in_channels', width)
        if mask_head['in_channels'] != width:
            raise ValueError(
                f'mask_head in_channels={mask_head["in_channels"]} does not '
                f'match the stage-2 output of depth {self.depth} '
                f'({width} channels); leave it unset to take it from stage 2')
        self.mask_head = MODELS.build(mask_head)
        self.pool_mode = pooling.get('mode', 'stride')
        sites = list(self._pool_sites(width))
        self.pooling = nn.ModuleDict({
            site: MODELS.build(dict(pooling, channels=channels))
            for site, channels, _ in sites
        })
        # the one lookup of a 3x3 conv's pooling (see pooling_for)
        self._conv_sites = {conv: site for site, _, conv in sites
                            if conv is not None}
        self.last_mask: Optional[Tensor] = None
        self.last_logits: Optional[Tensor] = None

    # ---------------------------------------------------------------- set-up
    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, value: str) -> None:
        if value not in EXECUTIONS:
            raise ValueError(f'unknown execution mode {value!r}; expected '
                             f'one of {EXECUTIONS}')
        self._execution = value

    def train(self, mode: bool = True) -> 'SelDSResNetV1c':
        """As ``ResNet.train`` (frozen stages, ``norm_eval``), returning the
        module like ``nn.Module.train`` (mmseg's returns None). Drops the
        folded weights sparse inference keeps (:func:`clear_sparse_weights`):
        training may change weights without a new tensor version (fused
        optimisers, BatchNorm statistics), so an ``eval()`` refolds them.
        Training with ``execution='sparse'`` and norm layers of stages 3-4
        that train is a ``SparseTrainingError``."""
        super().train(mode)
        clear_sparse_weights(self)
        if not getattr(self, 'defer_sparse_check', False):
            self.check_sparse_training()
        return self

    def check_sparse_training(self) -> None:
        """Raise ``SparseTrainingError`` when sparse execution would
        train a norm layer of stages 3-4 (it folds them into their running
        statistics), before a forward fails on the first of them. A
        segmentor that freezes modules after ``train()``
        (``SelDSEncoderDecoder(train_only=...)``) sets
        ``defer_sparse_check`` and calls this itself once they are
        frozen."""
        if not self.training or self.execution != 'sparse':
            return
        training = [name for name, m in self.named_modules()
                    if isinstance(m, _BatchNorm) and m.training
                    and name.startswith(('layer3.', 'layer4.'))]
        if training:
            raise SparseTrainingError(
                f"execution='sparse' in training mode, with "
                f'{len(training)} norm layers of stages 3-4 training '
                f'({training[0]}, ...): {SPARSE_TRAINING}')

    def effective_execution(self) -> str:
        """The execution of the next forward: ``'auto'`` resolves to dense
        emulation in training mode and sparse execution in eval mode."""
        if self.execution != 'auto':
            return self.execution
        return 'dense' if self.training else 'sparse'

    def _selective_layers(self) -> Iterator[Tuple[str, nn.Module]]:
        for layer_name in ('layer3', 'layer4'):
            for i, block in enumerate(getattr(self, layer_name)):
                yield f'{layer_name}_{i}', block

    def _check_layout(self) -> None:
        if self.num_stages != 4 or tuple(self.strides) != OS8_STRIDES:
            raise ValueError(
                'SelDSResNetV1c needs an OS8 layout, strides=(1, 2, 1, 1) '
                'with dilated stages 3-4 (e.g. dilations=(1, 1, 2, 4)); got '
                f'num_stages={self.num_stages}, strides={tuple(self.strides)}'
                f', dilations={tuple(self.dilations)}')
        if self.style != 'pytorch':
            raise ValueError('SelDSResNetV1c supports style="pytorch" only '
                             '(the stride-2 conv of the OS16 entrance is the '
                             '3x3 one)')
        if self.dcn is not None or self.plugins is not None \
                or self.conv_cfg is not None:
            raise NotImplementedError('SelDSResNetV1c supports plain convs '
                                      'only (no dcn, plugins or conv_cfg)')
        for site, block in self._selective_layers():
            for name, m in main_path(block):
                d = m.dilation[0] if is_3x3(m) else 1
                if d > 1 and d % 2:
                    raise ValueError(
                        f'{site}.{name} has dilation {d}: OS8 dilations of '
                        'stages 3-4 must be 1 or even (the OS16 conv uses '
                        'half of it); check dilations, multi_grid and '
                        'contract_dilation')

    def _pool_sites(self, width: int
                    ) -> Iterator[Tuple[str, int, Optional[nn.Conv2d]]]:
        """(name in ``self.pooling``, channels, 3x3 conv or None for the
        entrance) of every pooling module, in a fixed order."""
        if self.pool_mode != 'stride':
            yield ENTRANCE, width, None
        for site, block in self._selective_layers():
            for name, m in main_path(block):
                if is_3x3(m):
                    yield f'{site}_{name}', m.in_channels, m

    def pooling_for(self, conv: nn.Conv2d) -> nn.Module:
        """The pooling module of a 3x3 conv of stages 3-4: what forms the
        low-resolution value of the full-resolution cells its down-sampled
        cells read (and, at the stride entrance, the output's pooling)."""
        return self.pooling[self._conv_sites[conv]]

    def selective_macs(self, full_px: float, low: float) -> dict:
        """Multiply-adds of stages 3-4 for one image with ``full_px``
        full-resolution pixels and ``low`` down-sampled cells, by part
        (``full``, ``down``, ``pooling``), counted by the layers that run
        them (:func:`~mmselds.ops.layers_macs`)."""
        stride_entrance = self.pool_mode == 'stride'
        macs = dict(full=0.0, down=0.0, pooling=0.0)
        if not stride_entrance:
            # pool-then-compute: the lo of the entrance block's input
            macs['pooling'] += low * self.pooling[ENTRANCE].channels * \
                pooling_macs_per_value(self.pooling[ENTRANCE])
        for site, block in self._selective_layers():
            parts = [layers_macs(main_layers(block), full_px, low,
                                 self.pooling_for,
                                 dense_entrance=stride_entrance
                                 and site == 'layer3_0')]
            if block.downsample is not None:
                parts.append(layers_macs(block.downsample, full_px, low))
            for part in parts:
                for k in macs:
                    macs[k] += part[k]
        return macs

    # --------------------------------------------------------------- forward
    def _check_mask(self, ds_mask: Tensor, feat: Tensor, size) -> Tensor:
        N, _, h, w = feat.shape
        expected = (N, 1, h // 2, w // 2)
        if not isinstance(ds_mask, Tensor) or tuple(ds_mask.shape) != expected:
            got = tuple(ds_mask.shape) if isinstance(ds_mask, Tensor) \
                else type(ds_mask).__name__
            raise ValueError(
                f'ds_mask must have shape (N, 1, H/16, W/16) = {expected} for '
                f'an input of {size[0]}x{size[1]}, got {got}')
        if not bool(((ds_mask >= 0) & (ds_mask <= 1)).all()):
            raise ValueError(
                'ds_mask must hold values in [0, 1] (1 = down-sample; dense '
                'execution blends by it, sparse execution needs 0 or 1), got '
                'NaN or values outside [0, 1]')
        return ds_mask.to(device=feat.device, dtype=feat.dtype)

    def _block(self, block: nn.Module, x: Union[Tensor, MixedFeature],
               cells: CellMask) -> MixedFeature:
        """One residual block on a mixed feature, or, at the stage-3
        entrance, on the dense stage-2 map ``x``."""
        # In stride mode the entrance block runs on the dense map up to its
        # 3x3 conv, whose low cells are the OS16 stride-2 conv.
        entrance_pool = 'stride' if self.pool_mode == 'stride' \
            else self.pooling[ENTRANCE]
        return run_residual_block(x, main_layers(block), block.downsample,
                                  cells, entrance_pool, self.pooling_for)

    def _run_block(self, block, x, cells) -> MixedFeature:
        data = x if isinstance(x, Tensor) else x.data
        if not (self.with_cp and self.training and data.requires_grad):
            return self._block(block, x, cells)
        pool = getattr(x, 'pool', 'stride')

        def run(d):
            arg = d if isinstance(x, Tensor) else MixedFeature(d, cells, pool)
            return self._block(block, arg, cells).data

        return MixedFeature(cp.checkpoint(run, data, use_reentrant=False),
                            cells, pool)

    def forward(self, x: Tensor, ds_mask: Optional[Tensor] = None
                ) -> Tuple[Tensor, ...]:
        """Args:
            x (Tensor): (N, 3, H, W) images, H and W multiples of 16.
            ds_mask (Tensor, optional): (N, 1, H/16, W/16), 1 = down-sample;
                overrides the predicted mask. Default: None.
        Returns:
            SelectiveOutputs: the ``out_indices`` stage outputs, a tuple as
            ``ResNetV1c`` returns them (stages 3-4 densified at OS8), whose
            ``mixed`` is the stage-4 output before densifying (None when
            stage 4 is not in ``out_indices``), for a selective neck or
            head, and ``cells`` the selection (its ``mask`` carries the
            straight-through gradient in training), for the segmentor.
        """
        if not isinstance(x, Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, Tensor) else \
                type(x).__name__
            raise ValueError(f'the backbone takes (N, C, H, W) image '
                             f'tensors, got {got}')
        size = x.shape[2:]
        if x.shape[0] == 0:
            raise ValueError(f'an empty batch ({tuple(x.shape)}): selective '
                             'down-sampling needs at least one image')
        check_input_size(size)
        if self.effective_execution() == 'sparse':
            # inference: the stem and stages 1-2 run mmseg's own modules;
            # oneDNN's convs are faster on channels-last input (R101,
            # 512x1024, 2 threads: 3.9 s vs 5.1 s for the backbone at s = 0),
            # and stages 3-4 read the map as channels-last rows anyway
            x = x.contiguous(memory_format=torch.channels_last)
        # stem and stages 1-2 stay dense (BatchNorm folded in inference)
        dense = dense_stages(self, x, folded=(
            self.effective_execution() == 'sparse' and not self.training))
        outs = [out for i, out in enumerate(dense) if i in self.out_indices]
        x = dense[-1]
        logits = self.mask_head(x)
        mask = self.mask_head.sample(logits) if ds_mask is None else \
            self._check_mask(ds_mask, x, size)
        cells = CellMask(mask, self.effective_execution())
        feat = x
        for stage, layer_name in ((2, 'layer3'), (3, 'layer4')):
            for block in getattr(self, layer_name):
                feat = self._run_block(block, feat, cells)
            if stage in self.out_indices:
                # sparse: densified when a head reads it (SelectiveOutputs)
                outs.append(feat if cells.execution == 'sparse'
                            else feat.densify())
        if cells.execution == 'sparse':
            release_workspace()  # hold the im2col buffer only in forward
        self.last_mask, self.last_logits = mask, logits
        # the mixed feature is the last output only if stage 4 is returned
        return SelectiveOutputs(outs, feat if 3 in self.out_indices else None,
                                cells)

    @property
    def last_ratio(self) -> Optional[float]:
        """Down-sampling ratio of the last forward."""
        return None if self.last_mask is None else \
            float(self.last_mask.detach().float().mean())
