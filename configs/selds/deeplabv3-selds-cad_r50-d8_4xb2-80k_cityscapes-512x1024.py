# CAD baseline: CADMaskHead, stride pooling, target sparsity loss (t = 0.5).
_base_ = [
    'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    '../_base_/selds_runtime.py'
]

model = dict(
    type='SelDSEncoderDecoder',
    # selective down-sampling needs inputs that are multiples of 16
    data_preprocessor=dict(test_cfg=dict(size_divisor=16)),
    backbone=dict(
        type='SelDSResNetV1c',
        # no threshold: evaluation down-samples as many cells as training
        # did; --cfg-options model.backbone.mask_head.threshold=T overrides
        mask_head=dict(type='CADMaskHead', tau=1.0),
        pooling=dict(type='SelectivePooling', mode='stride'),
        execution='auto'),
    sparsity_loss=dict(
        type='SparsityLoss', mode='target', target=0.5, loss_weight=1.0))

# tools/test.py --tta: averages the ds_ratio of the augmented passes too
tta_model = dict(type='SelDSTTAModel')
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='DownsampleRatioMetric')
]
test_evaluator = val_evaluator
# mmseg's visualizer that also outlines the cells computed at full
# resolution (OS8) on the prediction: tools/test.py --show-dir,
# SelDSInferencer(..., out_dir=...)
visualizer = dict(type='SelDSLocalVisualizer')
