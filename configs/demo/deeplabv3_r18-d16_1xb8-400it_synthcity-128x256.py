# Dense OS16 DeepLabV3 (the cheap reference): stage 3 strided, stage 4
# dilated 2, ASPP dilations halved, as mmseg's D16 configs.
_base_ = ['./deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py']
model = dict(
    backbone=dict(dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1)),
    decode_head=dict(dilations=(1, 6, 12, 18)))
