"""In-process evaluation with mmseg's own data pipeline and metrics (the
loop of mmengine's TestLoop, reusable for sweeps and timing)."""
import logging
from contextlib import contextmanager
from typing import Dict, List, Sequence

import torch
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from mmseg.registry import METRICS

from mmselds.analysis.timing import median, time_interleaved
from mmselds.datasets.checks import check_dataset_images


@contextmanager
def quiet_logger(level=logging.WARNING):
    """Silence mmengine's INFO messages (e.g. IoUMetric's class table)."""
    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def build_test_loader(cfg, data_root: str, num_images: int = None,
                      split: str = None):
    """The config's test dataloader (test pipeline) on ``data_root``, batch
    1, no workers; optionally the first ``num_images`` images only, and
    another Cityscapes-layout split (e.g. ``'train'``).

    Raises :class:`~mmselds.datasets.NoImagesError` naming the image folder
    if it is missing or holds no images."""
    loader = cfg.test_dataloader.copy()
    loader.dataset = loader.dataset.copy()
    loader.dataset.data_root = data_root
    if split is not None:
        loader.dataset.data_prefix = dict(img_path=f'leftImg8bit/{split}',
                                          seg_map_path=f'gtFine/{split}')
    if num_images is not None:
        loader.dataset.indices = num_images
    loader.update(batch_size=1, num_workers=0, persistent_workers=False)
    check_dataset_images(loader.dataset, 'test_dataloader')
    return Runner.build_dataloader(loader)


def load_batches(loader) -> List[dict]:
    return list(loader)


def evaluate(model, batches: Sequence[dict], dataset_meta: dict,
             metrics: Sequence[dict] = (dict(type='IoUMetric',
                                             iou_metrics=['mIoU']), ),
             on_batch=None) -> Dict[str, float]:
    """Run ``model.test_step`` over ``batches`` and return the metrics."""
    evaluator = Evaluator([METRICS.build(m) for m in metrics])
    evaluator.dataset_meta = dataset_meta
    model.eval()
    with torch.no_grad():
        for batch in batches:
            outputs = model.test_step(batch)
            evaluator.process(data_samples=outputs, data_batch=batch)
            if on_batch is not None:
                on_batch(model, batch, outputs)
    with quiet_logger():
        return evaluator.evaluate(len(batches))


def time_models(models: Dict[str, torch.nn.Module], batches: Sequence[dict],
                warmup: int = 2) -> Dict[str, Dict[str, float]]:
    """Median seconds per batch of each model, timed in one run, models and
    parts interleaved batch by batch (noise hits all alike).

    Returns:
        dict: name -> ``test_step`` (what ``tools/test.py`` runs per batch:
        data preprocessing, the forward, mmseg's post-processing with its
        resize and argmax) and ``forward`` (``encode_decode`` on the
        preprocessed batch: the network and the resize of its logits to the
        input). The two differ by more than the preprocessing: mmseg's
        argmax over the classes is several times faster on channels-last
        logits (a sparse selective head's) than on contiguous ones.
    """
    steps = {}
    with torch.no_grad():
        for name, model in models.items():
            prepared = []
            for batch in batches:
                data = model.data_preprocessor(batch, False)
                prepared.append((data['inputs'], [
                    s.metainfo for s in data['data_samples']]))
            steps[(name, 'test_step')] = \
                lambda i, m=model: m.test_step(batches[i])
            steps[(name, 'forward')] = \
                lambda i, m=model, p=prepared: m.encode_decode(*p[i])
        times = time_interleaved(steps, warmup=warmup,
                                 inputs=range(len(batches)))
    out: Dict[str, Dict[str, float]] = {name: {} for name in models}
    for (name, part), t in times.items():
        out[name][part] = median(t)
    return out
