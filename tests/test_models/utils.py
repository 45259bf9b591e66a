"""Builders shared by the model tests: narrow ResNets with randomised
BatchNorm statistics, so that eval-mode BN is far from the identity."""
import torch
from mmseg.models.backbones import ResNetV1c
from mmseg.registry import MODELS
from torch import nn

import mmselds  # noqa: F401

OS8 = dict(dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
           contract_dilation=True)
OS16 = dict(dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1),
            contract_dilation=True)
NARROW = dict(stem_channels=16, base_channels=16)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(
                    torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(
                    torch.rand(m.num_features, generator=g) + 0.5)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) *
                               (2 / fan_in)**0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def selds_backbone(depth=18, pool='stride', execution='auto', **kwargs):
    cfg = dict(type='SelDSResNetV1c', depth=depth,
               pooling=dict(type='SelectivePooling', mode=pool),
               execution=execution, **OS8, **NARROW)
    cfg.update(kwargs)
    model = randomize_(MODELS.build(cfg))
    # small logits: P(down-sample) near 0.5, so masks are mixed
    last = [m for m in model.mask_head.modules()
            if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(1e-2)
        last.bias.zero_()
    for p in model.pooling.values():
        if p.mode == 'adaptive':
            with torch.no_grad():
                p.logits.normal_(generator=torch.Generator().manual_seed(1))
    return model


def mmseg_resnet(selds: nn.Module, layout=OS8,
                 training: bool = False) -> ResNetV1c:
    """mmseg's own ResNetV1c holding the weights of ``selds``, in the given
    mode (its ``train()``/``eval()`` return None)."""
    ref = ResNetV1c(depth=selds.depth, **layout, **NARROW)
    missing, unexpected = ref.load_state_dict(selds.state_dict(),
                                              strict=False)
    assert not missing
    assert all(k.startswith(('mask_head.', 'pooling.')) for k in unexpected)
    ref.train(training)
    return ref
