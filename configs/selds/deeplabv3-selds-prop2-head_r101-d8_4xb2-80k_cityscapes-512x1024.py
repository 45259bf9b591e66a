# Prop. 2 with the selection carried on into the decode head: the ASPP head
# computes each cell at the backbone's resolution (docs/design_notes.md,
# "Selective ASPP head"); the auxiliary
# FCN head reads the densified stage-3 map as before.
_base_ = ['./deeplabv3-selds-prop2_r101-d8_4xb2-80k_cityscapes-512x1024.py']
model = dict(
    neck=dict(type='SelectivePoolingNeck'),
    decode_head=dict(type='SelDSASPPHead'))
