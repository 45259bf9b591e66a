# Prop. 2 with the selection carried on into the decode head: the ASPP head
# computes each cell at the backbone's resolution (docs/design_notes.md,
# "Selective ASPP head"); the auxiliary
# FCN head reads the densified stage-3 map as before.
_base_ = ['./deeplabv3-selds-prop2_r18-d8_1xb8-400it_synthcity-128x256.py']
model = dict(
    neck=dict(type='SelectivePoolingNeck'),
    decode_head=dict(type='SelDSASPPHead'))
