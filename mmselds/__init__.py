"""mmselds: mask-based selective down-sampling for MMSegmentation.

``mmselds.ops`` needs torch only: without MMSegmentation installed (e.g. on
a GPU benchmark machine) ``import mmselds`` gives the core ops alone. With
it, ``import mmselds`` also registers the backbone, mask heads, pooling,
loss, segmentor, metric and hooks into mmseg's registries (configs use
``custom_imports=dict(imports=['mmselds'])``).
"""
from .ops import *  # noqa: F401,F403
from .version import __version__  # noqa: F401

try:
    import mmseg  # noqa: F401
except ModuleNotFoundError as error:  # torch-only install: core ops only
    if error.name != 'mmseg':
        raise
else:
    from .utils.setup_env import fix_mmseg_package_name, import_quietly
    fix_mmseg_package_name()
    import_quietly()  # mmcv-lite's and the onedl fork's misleading noise
    from . import engine, evaluation, models  # noqa: F401,E402
