from .selds_resnet import SelDSResNetV1c, check_input_size

__all__ = ['SelDSResNetV1c', 'check_input_size']
