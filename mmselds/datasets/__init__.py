from .checks import (NoImagesError, check_dataloader_images,
                     check_dataset_images)
from .cityscapes import CityscapesConversionError, convert_cityscapes
from .synthetic_cityscapes import (GeneratedDataError, generate,
                                   generate_with_progress, is_generated,
                                   read_record, render_scene)

__all__ = [
    'CityscapesConversionError', 'GeneratedDataError', 'NoImagesError',
    'check_dataloader_images', 'check_dataset_images', 'convert_cityscapes',
    'generate', 'generate_with_progress', 'is_generated', 'read_record',
    'render_scene'
]
