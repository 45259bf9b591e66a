"""mmselds: mask-based selective down-sampling for MMSegmentation.

``import mmselds`` needs torch only and imports no mm* package: it gives
the core ops (``mmselds.ops``), and ``mmselds.analysis.timing`` or
``mmselds.analysis.plots`` run on machines without MMSegmentation (e.g. a
GPU benchmark machine). With MMSegmentation installed, it also registers
the backbone, mask heads, pooling, loss, segmentor, metric, hooks and
visualizer into mmseg's registries, for configs (``custom_imports=dict(
imports=['mmselds'])``) and tools: at once if mmseg is already imported,
otherwise as soon as mmseg is, before anything can be built from its
registries; and it lets ``_base_ = ['mmseg::...']`` find the onedl fork's
configs once mmengine is imported (``mmselds.utils.post_import``).
"""
import importlib

from .ops import *  # noqa: F401,F403
from .utils.post_import import when_imported as _when_imported
from .version import __version__  # noqa: F401

# subpackages that need mm* packages: imported on first attribute access
# (``mmselds.models``) when mmseg's import has not brought them in yet
_SUBPACKAGES = ('analysis', 'apis', 'datasets', 'engine', 'evaluation',
                'models', 'utils', 'visualization')


def _fix_config_bases(mmengine) -> None:
    from .utils.setup_env import fix_mmseg_package_name
    fix_mmseg_package_name()


def _register(mmseg) -> None:
    from .utils.setup_env import import_quietly
    import_quietly()  # mmcv-lite's and the onedl fork's misleading noise
    for name in ('engine', 'evaluation', 'models', 'visualization'):
        importlib.import_module(f'{__name__}.{name}')


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


_when_imported('mmengine', _fix_config_bases)
_when_imported('mmseg', _register)
