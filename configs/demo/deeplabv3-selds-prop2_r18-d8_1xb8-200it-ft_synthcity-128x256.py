# Selective down-sampling (Prop. 2 settings) fine-tuned from the dense OS8
# model, the way one starts from a released mmseg DeepLabV3 checkpoint:
# tools/demo.py passes load_from=<work_dir>/OS8/iter_400.pth; tools/train.py
# without load_from stops with an error saying so (fine_tunes).
_base_ = ['./deeplabv3-selds-prop2_r18-d8_1xb8-400it_synthcity-128x256.py']
load_from = None
custom_hooks = [
    dict(type='CheckLoadFromHook',
         fine_tunes='the dense OS8 demo model (configs/demo/deeplabv3_r18-'
         'd8_1xb8-400it_synthcity-128x256.py; tools/demo.py passes '
         'load_from=<work_dir>/OS8/iter_400.pth)'),
    dict(type='ExactResumeHook'),
]
model = dict(
    sparsity_loss=dict(
        type='SparsityLoss', mode='target-free', loss_weight=0.2))
iters = 200
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(optimizer=optimizer)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=20, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=20, end=iters,
         by_epoch=False)
]
train_cfg = dict(max_iters=iters, val_interval=iters)
default_hooks = dict(checkpoint=dict(interval=iters))
