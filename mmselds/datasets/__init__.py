from .checks import (NoImagesError, check_dataloader_images,
                     check_dataset_images)
from .synthetic_cityscapes import (generate, generate_with_progress,
                                   is_generated, render_scene)

__all__ = [
    'NoImagesError', 'check_dataloader_images', 'check_dataset_images',
    'generate', 'generate_with_progress', 'is_generated', 'render_scene'
]
