from .hooks import CheckLoadFromHook

__all__ = ['CheckLoadFromHook']
