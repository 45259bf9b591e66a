"""Shared helpers of the end-to-end tests: tiny generated data sets and
demo configs pointed at them."""
import os.path as osp
import socket

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'demo')
SELDS_DEMO = osp.join(
    DEMO, 'deeplabv3-selds-prop2_r18-d8_1xb8-400it_synthcity-128x256.py')


def small_cfg(path: str, data_root: str, size=(64, 128), batch_size=4,
              iters=30) -> Config:
    """A demo config on ``data_root`` with (H, W) = ``size`` images, no
    worker processes and ``iters`` training iterations."""
    cfg = Config.fromfile(path)
    h, w = size
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dl = cfg[loader]
        dl.num_workers, dl.persistent_workers = 0, False
        dl.dataset.data_root = data_root
        for t in dl.dataset.pipeline:
            if t['type'] in ('RandomResize', 'Resize'):
                t['scale'] = (w, h)
            if t['type'] == 'RandomCrop':
                t['crop_size'] = (h, w)
    cfg.train_dataloader.batch_size = batch_size
    cfg.model.data_preprocessor.size = (h, w)
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = iters
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    return cfg


def cfg_options(data_root: str, **extra) -> list:
    """--cfg-options for tools/*.py: ``data_root`` and no worker processes."""
    opts = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.dataset.data_root={data_root}',
                 f'{loader}.num_workers=0',
                 f'{loader}.persistent_workers=False']
    opts += [f'{k}={v}' for k, v in extra.items()]
    return opts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def count_pooled_values(monkeypatch):
    """Count, from now on, the multiply-adds of the pooled rows sparse
    execution computes (4 per value in ``avg`` and ``adaptive`` modes, as
    the MAC counter counts them): returns an object whose ``macs`` grows."""
    from mmselds.ops import SelectivePooling

    class Count:
        macs = 0

    count, pool_rows = Count(), SelectivePooling.pool_rows

    def counted(self, quads):
        if self.mode in ('avg', 'adaptive'):
            count.macs += 4 * quads.shape[0] * quads.shape[2]
        return pool_rows(self, quads)

    monkeypatch.setattr(SelectivePooling, 'pool_rows', counted)
    return count


def cityscapes_dataset(root, split: str = 'train', gt: str = 'gtFine'):
    """mmseg's own ``CityscapesDataset`` over ``root``'s ``split`` with
    the labels of ``gt`` (``gtFine``, ``gtCoarse``), loading images and
    labels as the training pipeline does."""
    from mmengine.registry import init_default_scope
    from mmseg.datasets import CityscapesDataset
    init_default_scope('mmseg')
    return CityscapesDataset(
        data_root=str(root), seg_map_suffix=f'_{gt}_labelTrainIds.png',
        data_prefix=dict(img_path=f'leftImg8bit/{split}',
                         seg_map_path=f'{gt}/{split}'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations'),
                  dict(type='PackSegInputs')])
