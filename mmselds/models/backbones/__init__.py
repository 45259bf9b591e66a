from .selds_resnet import SelDSResNetV1c

__all__ = ['SelDSResNetV1c']
