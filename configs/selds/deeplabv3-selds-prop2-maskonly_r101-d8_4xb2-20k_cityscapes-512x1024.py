# Start from mmseg's released DeepLabV3-R101-D8 (Cityscapes, 80k; the URL of
# mmseg's metafile, deeplabv3/metafile.yaml) and train
# only the mask head and the adaptive pooling; the backbone and the heads are
# frozen (no gradient, BatchNorm statistics and dropout in eval mode).
_base_ = ['./deeplabv3-selds-prop2_r101-d8_4xb2-80k_cityscapes-512x1024.py']

load_from = 'https://mmassets.onedl.ai/mmsegmentation/v0.5/deeplabv3/deeplabv3_r101-d8_512x1024_80k_cityscapes/deeplabv3_r101-d8_512x1024_80k_cityscapes_20200606_113503-9e428899.pth'  # noqa
model = dict(
    pretrained=None,
    train_only=('backbone.mask_head', 'backbone.pooling'))
iters = 20000
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters,
         by_epoch=False)
]
train_cfg = dict(max_iters=iters, val_interval=2000)
default_hooks = dict(checkpoint=dict(interval=2000))
