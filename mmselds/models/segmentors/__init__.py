from .selds_encoder_decoder import SelDSEncoderDecoder
from .selds_tta import SelDSTTAModel

__all__ = ['SelDSEncoderDecoder', 'SelDSTTAModel']
