"""mmselds: mask-based selective down-sampling for MMSegmentation."""
from .ops import *  # noqa: F401,F403
from .version import __version__  # noqa: F401
