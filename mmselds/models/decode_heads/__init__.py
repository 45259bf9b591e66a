from .selds_aspp_head import SelDSASPPHead, conv_module_selective

__all__ = ['SelDSASPPHead', 'conv_module_selective']
