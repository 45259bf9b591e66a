# Prop. 2: depthwise mask head, adaptive pooling, target-free sparsity loss.
_base_ = ['./deeplabv3-selds-prop1_r50-d8_4xb2-80k_cityscapes-512x1024.py']

model = dict(
    backbone=dict(pooling=dict(type='SelectivePooling', mode='adaptive')),
    sparsity_loss=dict(
        _delete_=True,
        type='SparsityLoss',
        mode='target-free',
        loss_weight=0.1))
