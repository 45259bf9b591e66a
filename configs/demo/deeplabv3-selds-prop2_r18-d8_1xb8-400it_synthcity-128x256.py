# Selective down-sampling with the letter's Prop. 2 settings: depthwise mask
# head, adaptive pooling, target-free sparsity loss.
_base_ = [
    './deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py',
    '../_base_/selds_runtime.py'
]
model = dict(
    type='SelDSEncoderDecoder',
    backbone=dict(
        type='SelDSResNetV1c',
        mask_head=dict(type='DepthwiseMaskHead', channels=(32, 16)),
        pooling=dict(type='SelectivePooling', mode='adaptive')),
    sparsity_loss=dict(
        type='SparsityLoss', mode='target-free', loss_weight=0.03))
# tools/test.py --tta: averages the ds_ratio of the augmented passes too
tta_model = dict(type='SelDSTTAModel')
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='DownsampleRatioMetric')
]
test_evaluator = val_evaluator
# the mask head learns from the weak straight-through gradient of the mask:
# a larger learning rate lets it become decisive within the short schedule
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'backbone.mask_head': dict(lr_mult=10.0)}))
# mmseg's visualizer that also outlines the cells computed at full
# resolution (OS8) on the prediction: tools/test.py --show-dir,
# SelDSInferencer(..., out_dir=...)
visualizer = dict(type='SelDSLocalVisualizer')
