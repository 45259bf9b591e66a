"""Building a segmentor from a config for the analysis tools."""
from typing import Optional

from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from .checkpoint import load_model_checkpoint
from .config import merge_options, read_config


def build_segmentor(config: str, checkpoint: Optional[str] = None,
                    cfg_options: Optional[dict] = None, device: str = 'cpu',
                    strict: bool = True):
    """(model in eval mode, config). Without a checkpoint the model keeps
    PyTorch's default random initialisation (enough to count and time it);
    pretrained backbones are never downloaded. A checkpoint is loaded
    through ``mmselds.utils.checkpoint.load_model_checkpoint``: a bad file
    or (with ``strict``) tensors that do not fit are a ``ValueError``."""
    cfg = merge_options(read_config(config), cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    cfg.model.pretrained = None
    cfg.model.backbone.pop('init_cfg', None)
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_model_checkpoint(model, checkpoint, strict=strict)
    model.to(device)
    model.eval()
    return model, cfg
