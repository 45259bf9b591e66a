# Prop. 1: the depthwise-separable mask head, stride pooling, target loss.
_base_ = ['./deeplabv3-selds-cad_r50-d8_4xb2-80k_cityscapes-512x1024.py']

model = dict(
    backbone=dict(
        mask_head=dict(
            type='DepthwiseMaskHead',
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            tau=1.0)))
