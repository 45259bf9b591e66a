from .selds_aspp_head import SelDSASPPHead

__all__ = ['SelDSASPPHead']
