# The demo's selective model: Prop. 2 fine-tuned from the dense OS8 model
# (tools/demo.py passes load_from=<work_dir>/OS8/iter_400.pth), with the
# selection carried on into the decode head: the ASPP head computes each
# cell at the backbone's resolution (SelDSASPPHead keeps ASPPHead's
# parameter names, so the OS8 checkpoint loads as it is); the auxiliary FCN
# head reads the densified stage-3 map as before.
_base_ = ['./deeplabv3-selds-prop2_r18-d8_1xb8-200it-ft_synthcity-128x256.py']
model = dict(
    neck=dict(type='SelectivePoolingNeck'),
    decode_head=dict(type='SelDSASPPHead'))
