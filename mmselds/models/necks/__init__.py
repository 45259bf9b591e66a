from .selective_pooling_neck import SelectivePoolingNeck

__all__ = ['SelectivePoolingNeck']
