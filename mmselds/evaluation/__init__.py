from .ratio_metric import DownsampleRatioMetric

__all__ = ['DownsampleRatioMetric']
