# The CAD baseline at demo scale: CAD's mask head (plain 3x3 convs, no
# norm, as configs/selds' CAD config), stride pooling and the target
# sparsity loss; otherwise the Prop. 1 config (same hidden widths as the
# demo's depthwise head, same data, schedule and learning rates).
_base_ = ['./deeplabv3-selds-prop1_r18-d8_1xb8-200it-ft_synthcity-128x256.py']
model = dict(
    backbone=dict(
        mask_head=dict(_delete_=True, type='CADMaskHead', channels=(32, 16))))
