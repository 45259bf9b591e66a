from .checks import (NoImagesError, check_dataloader_images,
                     check_dataset_images)
from .synthetic_cityscapes import generate, is_generated, render_scene

__all__ = [
    'NoImagesError', 'check_dataloader_images', 'check_dataset_images',
    'generate', 'is_generated', 'render_scene'
]
