from .selds_encoder_decoder import SelDSEncoderDecoder

__all__ = ['SelDSEncoderDecoder']
