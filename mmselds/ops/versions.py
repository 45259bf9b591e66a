"""What a kept result is checked against: a tensor's in-place version."""
from typing import Optional

from torch import Tensor


def version(t: Tensor) -> Optional[int]:
    """``t``'s in-place version counter, or None for an inference tensor
    (``torch.inference_mode`` gives it none): a result kept against the
    version is then not kept. (Asked, not tested with ``is_inference()``
    first: this runs for every tensor of every conv of a sparse pass.)"""
    try:
        return t._version
    except RuntimeError:  # 'Inference tensors do not track version counter'
        return None
