"""Check that a config's data sets have images before anything is built.

mmengine's ``BaseDataset`` fails on an empty image list with ``ValueError:
need at least one array to concatenate`` (``_serialize_data``), which names
neither the folder nor the dataloader. :func:`check_dataloader_images` is
called where every tool builds its data: ``mmselds.utils.launch.load_config``
(``tools/train.py``, ``tools/test.py``) and
``mmselds.utils.evaluation.build_test_loader`` (the analysis tools, the
demo).
"""
import inspect
import os
import os.path as osp
from typing import Optional, Sequence

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


class NoImagesError(FileNotFoundError):
    """A data set's image folder is missing or holds no images, or its
    images lack the label files its pipeline loads."""


class InvalidLabelError(ValueError):
    """Label maps that cannot be the labels of their images: values that
    are neither a class nor ``ignore_index``, or another size."""


def check_labels(data_samples, num_classes: int, ignore_index,
                 image_sizes: bool = False) -> None:
    """Raise :class:`InvalidLabelError` naming the label file if a data
    sample's ``gt_sem_seg`` holds a value that is neither a class (0 to
    ``num_classes - 1``) nor ``ignore_index`` (torch's cross-entropy would
    fail deep inside with "Target 23 is out of bounds", and mmseg's
    ``IoUMetric`` drops such pixels: mIoU 0 without a word), or, with
    ``image_sizes``, if a label map is not the size of its original
    image (``ori_shape``; mmseg's metric would fail after the whole run).
    Data samples without labels pass."""
    import torch
    labelled = [(i, s) for i, s in enumerate(data_samples or ())
                if 'gt_sem_seg' in s]

    def name_of(i, sample):
        return sample.metainfo.get('seg_map_path') or \
            f'the label of image {i} of the batch'

    for i, sample in labelled:
        label, ori = sample.gt_sem_seg.data, sample.metainfo.get('ori_shape')
        if image_sizes and ori is not None and \
                tuple(label.shape[-2:]) != tuple(ori[:2]):
            h, w = label.shape[-2:]
            raise InvalidLabelError(
                f'{name_of(i, sample)} is {w}x{h} pixels, its image '
                f'{sample.metainfo.get("img_path", "")} {ori[1]}x{ori[0]}: '
                'a label map must be the size of its image (were the images '
                'resized? Resize the labels too, with nearest neighbour)')

    def out_of_range(label):
        bad = (label < 0) | (label >= num_classes)
        return bad & (label != ignore_index) if ignore_index is not None \
            else bad

    if not labelled or not bool(torch.stack([
            out_of_range(s.gt_sem_seg.data).any()
            for _, s in labelled]).any()):  # one device sync per batch
        return
    for i, sample in labelled:
        label = sample.gt_sem_seg.data
        bad = out_of_range(label)
        if not bool(bad.any()):
            continue
        name = name_of(i, sample)
        values = torch.unique(label[bad]).tolist()
        shown = ', '.join(map(str, values[:8])) + \
            (', ...' if len(values) > 8 else '')
        hint = ("; Cityscapes' *_gtFine_labelIds.png hold label IDs "
                '(0-33), the training IDs are the '
                '*_gtFine_labelTrainIds.png that '
                'tools/dataset_converters/cityscapes.py writes'
                if 'labelIds' in str(name) else '')
        raise InvalidLabelError(
            f'{name} holds label values {shown}: the model has '
            f'{num_classes} classes (labels 0-{num_classes - 1}'
            + (f', {ignore_index} = ignore' if ignore_index is not None
               else '') + f'){hint}')


def _dataset_class(dataset_type):
    if inspect.isclass(dataset_type):
        return dataset_type
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS
    with DefaultScope.overwrite_default_scope('mmseg'):
        return DATASETS.get(dataset_type)


def _default(cls, key: str, fallback):
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        param = inspect.signature(init).parameters.get(key)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return fallback


def _join(data_root: str, path: str) -> str:
    """As mmengine's ``BaseDataset._join_prefix`` for ``data_prefix``
    (an empty prefix is ``data_root`` itself)."""
    if data_root and not osp.isabs(path) and '://' not in path:
        return osp.join(data_root, path) if path else data_root
    return path


def check_dataset_images(dataset: dict, where: str = 'dataset') -> None:
    """Raise :class:`NoImagesError` if an mmseg data set config
    (``BaseSegDataset`` and subclasses such as ``CityscapesDataset``, or a
    wrapper of them) would find no image: the image folder is missing or
    holds no ``*{img_suffix}`` file, or its ``ann_file`` lists nothing;
    or if its pipeline loads labels (``LoadAnnotations``) and images lack
    their ``*{seg_map_suffix}`` file (real Cityscapes before its
    converter); :class:`InvalidLabelError` if label files it samples are
    not the size of their images or 16-bit above 255
    (:func:`check_label_files`). Data sets of other kinds and remote
    storage are not checked."""
    if dataset is None:
        return
    if dataset.get('dataset') is not None:  # RepeatDataset & co.
        check_dataset_images(dataset['dataset'], where)
    for i, sub in enumerate(dataset.get('datasets') or ()):  # ConcatDataset
        check_dataset_images(sub, f'{where}.datasets[{i}]')
    if 'type' not in dataset:
        return
    try:
        from mmseg.datasets import BaseSegDataset
        cls = _dataset_class(dataset['type'])
    except (ImportError, KeyError):
        return
    if cls is None or not issubclass(cls, BaseSegDataset):
        return
    backend = (dataset.get('backend_args') or {}).get('backend', 'local')
    if backend != 'local':
        return
    data_root = dataset.get('data_root') or ''
    prefix = (dataset.get('data_prefix') or {}).get('img_path') or ''
    suffix = dataset.get('img_suffix', _default(cls, 'img_suffix', '.jpg'))
    img_dir = _join(data_root, prefix)
    if '://' in img_dir:
        return
    settings = (f"(data_root='{data_root}', data_prefix.img_path="
                f"'{prefix}')")
    ann_file = dataset.get('ann_file') or ''
    ann_file = _join(data_root, ann_file) if ann_file else ''
    if ann_file and not osp.isdir(ann_file):
        if not osp.isfile(ann_file):
            raise NoImagesError(f'{where}: the annotation file {ann_file} '
                                f'does not exist {settings}')
        with open(ann_file) as f:
            if not any(line.strip() for line in f):
                raise NoImagesError(f'{where}: the annotation file '
                                    f'{ann_file} lists no images')
        return
    if not osp.isdir(img_dir or '.'):
        raise NoImagesError(f'{where}: the image folder {img_dir} does not '
                            f'exist {settings}')
    images = [osp.relpath(osp.join(root, name), img_dir or '.')
              for root, _, files in os.walk(img_dir or '.', followlinks=True)
              for name in sorted(files) if name.endswith(suffix)]
    if not images:
        raise NoImagesError(
            f'{where}: the image folder {img_dir} holds no images (no '
            f'*{suffix} file in it or its subfolders) {settings}')
    seg_prefix = (dataset.get('data_prefix') or {}).get('seg_map_path')
    if seg_prefix is None or not _loads_annotations(dataset.get('pipeline')):
        return
    seg_suffix = dataset.get('seg_map_suffix',
                             _default(cls, 'seg_map_suffix', '.png'))
    seg_dir = _join(data_root, seg_prefix)
    labels = [osp.join(seg_dir, name[:-len(suffix)] + seg_suffix)
              for name in images]
    missing = [path for path in labels if not osp.isfile(path)]
    if missing:
        hint = ('; for Cityscapes, tools/dataset_converters/cityscapes.py '
                'DATA_ROOT writes them' if 'labelTrainIds' in seg_suffix
                else '')
        raise NoImagesError(
            f'{where}: {len(missing)} of the {len(images)} images have no '
            f'label file (*{seg_suffix} in {seg_dir}), e.g. {missing[0]}'
            f'{hint} (data_prefix.seg_map_path=\'{seg_prefix}\'; a split '
            'without labels needs a pipeline without LoadAnnotations)')
    check_label_files([(osp.join(img_dir, name), label)
                       for name, label in zip(images, labels)], where)


def check_label_files(pairs: Sequence, where: str = 'dataset',
                      samples: int = 8) -> None:
    """Raise :class:`InvalidLabelError` if one of ``samples`` (image,
    label file) pairs spread over ``pairs`` has a label map of another
    size than its image (mmseg crops both alike, so training would learn
    from misplaced labels, and its metric fails after the whole run), or
    is a 16-bit PNG with values above 255 (mmseg reads labels as 8-bit:
    they would wrap around, 255 = ignore included, silently). Reads the
    files' headers, and the pixels of 16-bit labels only."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        return
    step = max(1, len(pairs) // samples)
    for image_path, label_path in list(pairs)[::step][:samples]:
        try:
            with Image.open(image_path) as image, \
                    Image.open(label_path) as label:
                image_size, label_size = image.size, label.size
                # mmcv reads images upright (EXIF orientation applied),
                # labels as stored
                if image.getexif().get(0x0112) in (5, 6, 7, 8):
                    image_size = image_size[::-1]
                wide = label.mode.startswith('I')
                top = int(np.asarray(label).max()) if wide else 0
        except (OSError, ValueError):
            continue  # unreadable: the data loader names it
        if image_size != label_size:
            raise InvalidLabelError(
                f'{where}: {label_path} is {label_size[0]}x{label_size[1]} '
                f'pixels, its image {image_path} {image_size[0]}x'
                f'{image_size[1]}: a label map must be the size of its image '
                '(were the images resized? Resize the labels too, with '
                'nearest neighbour, or convert them again from the '
                'originals)')
        if top > 255:
            raise InvalidLabelError(
                f'{where}: {label_path} is a 16-bit PNG with values up to '
                f'{top}: mmseg reads label maps as 8-bit, so values above '
                '255 would wrap around (255 = ignore too); write the labels '
                'as 8-bit PNGs of class indices')


def _loads_annotations(pipeline) -> bool:
    """Whether a pipeline (nested lists and dicts, as ``TestTimeAug``'s)
    has a ``LoadAnnotations`` step."""
    if isinstance(pipeline, dict):
        kind = pipeline.get('type')
        name = getattr(kind, '__name__', str(kind)).split('.')[-1]
        return name == 'LoadAnnotations' or any(
            _loads_annotations(v) for v in pipeline.values()
            if isinstance(v, (list, tuple, dict)))
    if isinstance(pipeline, (list, tuple)):
        return any(_loads_annotations(step) for step in pipeline)
    return False


def check_dataloader_images(cfg, loaders: Optional[Sequence[str]] = None
                            ) -> None:
    """:func:`check_dataset_images` on the data set of each dataloader of
    ``cfg`` named in ``loaders`` (default: all three) that the config
    defines."""
    for name in LOADERS if loaders is None else loaders:
        loader = cfg.get(name)
        if loader:
            check_dataset_images(loader.get('dataset'), name)
