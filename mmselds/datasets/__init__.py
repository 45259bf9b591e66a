from .synthetic_cityscapes import generate, is_generated, render_scene

__all__ = ['generate', 'is_generated', 'render_scene']
