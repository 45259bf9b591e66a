from .checks import (InvalidLabelError, NoImagesError, check_dataloader_images,
                     check_dataset_images, check_labels)
from .cityscapes import CityscapesConversionError, convert_cityscapes
from .synthetic_cityscapes import (GeneratedDataError, generate,
                                   generate_with_progress, is_generated,
                                   read_record, render_scene)

__all__ = [
    'CityscapesConversionError', 'GeneratedDataError', 'InvalidLabelError',
    'NoImagesError', 'check_dataloader_images', 'check_dataset_images',
    'check_labels', 'convert_cityscapes', 'generate',
    'generate_with_progress', 'is_generated', 'read_record', 'render_scene'
]
