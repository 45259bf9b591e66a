"""mmselds: mask-based selective down-sampling for MMSegmentation.

``mmselds.ops`` needs torch only. When MMSegmentation is installed,
``import mmselds`` also registers the backbone, mask heads, pooling, loss,
segmentor, metric and hooks into mmseg's registries (configs use
``custom_imports=dict(imports=['mmselds'])``).
"""
from importlib.util import find_spec

from .ops import *  # noqa: F401,F403
from .version import __version__  # noqa: F401

if find_spec('mmseg') is not None:
    from .utils import fix_mmseg_package_name
    fix_mmseg_package_name()
    from . import engine, evaluation, models  # noqa: F401,E402
