"""Building a segmentor from a config, for the tools and the Python API."""
import copy
import logging
from typing import Mapping, Optional, Union

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, MODELS

from .checkpoint import load_model_checkpoint
from .config import merge_options, read_config


def build_segmentor(config: Union[str, Config],
                    checkpoint: Optional[str] = None,
                    cfg_options: Optional[dict] = None, device: str = 'cpu',
                    strict: bool = True):
    """(model in eval mode, config), from a config file or ``Config`` (not
    changed: a copy gets the options). Without a checkpoint the model
    keeps PyTorch's default random initialisation (enough to count and
    time it); pretrained backbones are never downloaded. A checkpoint is
    loaded through ``mmselds.utils.checkpoint.load_model_checkpoint``: a
    bad file or (with ``strict``) tensors that do not fit are a
    ``ValueError``. As mmseg's ``init_model``, the model gets the config
    as ``model.cfg`` (``inference_model`` reads its test pipeline) and
    ``model.dataset_meta`` (classes and palette): the checkpoint's, or
    else those of the config's test data set."""
    cfg = copy.deepcopy(config) if isinstance(config, Config) \
        else read_config(config)
    cfg = merge_options(cfg, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    cfg.model.pretrained = None
    cfg.model.backbone.pop('init_cfg', None)
    model = MODELS.build(cfg.model)
    meta = {}
    if checkpoint:
        meta = load_model_checkpoint(model, checkpoint,
                                     strict=strict).get('meta') or {}
    model.cfg = cfg
    model.dataset_meta = checkpoint_meta(meta) or config_meta(cfg, model)
    model.to(device)
    model.eval()
    return model, cfg


def checkpoint_meta(meta: dict) -> Optional[dict]:
    """Classes and palette a checkpoint's meta carries (mmseg 1.x
    ``dataset_meta``, 0.x ``CLASSES``/``PALETTE``), or None."""
    if meta.get('dataset_meta'):
        found = meta['dataset_meta']
        return dict(classes=found.get('classes'),
                    palette=found.get('palette'))
    if meta.get('CLASSES'):
        return dict(classes=meta['CLASSES'], palette=meta.get('PALETTE'))
    return None


def _dataset_meta(dataset) -> Optional[dict]:
    """The classes and palette a data set config gives: its ``metainfo``
    over its class's ``METAINFO``, through wrappers (``RepeatDataset``'s
    ``dataset``, ``ConcatDataset``'s first of ``datasets``)."""
    while isinstance(dataset, Mapping) and 'type' in dataset and (
            dataset.get('dataset') or dataset.get('datasets')):
        dataset = dataset.get('dataset') or dataset['datasets'][0]
    if not isinstance(dataset, Mapping):
        return None
    try:
        meta = dict(DATASETS.get(dataset.get('type')).METAINFO)
    except (AttributeError, KeyError, TypeError):
        meta = {}
    meta.update(dataset.get('metainfo') or {})
    if not meta.get('classes'):
        return None
    return dict(classes=meta['classes'], palette=meta.get('palette'))


def config_meta(cfg: Config, model) -> dict:
    """Classes and palette for a model whose checkpoint has none: those
    of the config's test (else validation) data set when it has as many
    classes as the model predicts, else those of the mmseg data set with
    that many classes (Cityscapes for 19), with a warning."""
    from mmseg.utils import dataset_aliases, get_classes, get_palette
    n = model.decode_head.num_classes
    for name in ('test_dataloader', 'val_dataloader'):
        meta = _dataset_meta((cfg.get(name) or {}).get('dataset'))
        if meta and len(meta['classes']) == n:
            return meta
    alias = next((k for k in dataset_aliases if len(get_classes(k)) == n),
                 'cityscapes')
    print_log(f'no class names in the checkpoint or the config for {n} '
              f'classes: using those of {alias}', logger='current',
              level=logging.WARNING)
    return dict(classes=get_classes(alias), palette=get_palette(alias))
