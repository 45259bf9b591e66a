import contextlib
import io
import sys
import warnings
from importlib import metadata

# Exact messages of third-party import-time noise that reads like an error
# but is not one for mmselds (see ``import_quietly``).
MMCV_LITE_WARNING = r'Fail to import ``MultiScaleDeformableAttention``'
ONEDL_LINE = 'Could not import OneDL'


def fix_mmseg_package_name() -> None:
    """Let ``_base_ = ['mmseg::...']`` find the onedl fork's configs.

    mmengine maps the module ``mmseg`` to the distribution
    ``mmsegmentation``; the maintained fork installs as
    ``onedl-mmsegmentation`` with the same module and packaged configs.
    """
    from mmengine.config import utils
    for dist in ('mmsegmentation', 'onedl-mmsegmentation'):
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            continue
        utils.MODULE2PACKAGE['mmseg'] = dist
        return


def import_quietly() -> None:
    """Import the OpenMMLab modules whose import prints misleading noise,
    dropping exactly that noise (each module prints it once, on its first
    import, so later imports by mmengine's registries stay quiet):

    * mmcv-lite's ``UserWarning: Fail to import MultiScaleDeformableAttention
      ... install mmcv rather than mmcv-lite`` (``mmcv.cnn.bricks.
      transformer``): that op is for deformable-attention models; mmselds
      and mmseg's CNN segmentors never use it.
    * the onedl fork's ``Could not import OneDL`` (``mmseg.datasets`` and
      ``mmseg.datasets.transforms``, a debug message that mmengine's
      ``print_log`` prints with ``print`` when no logger is given): the
      optional OneDL data-platform integration, not needed here.

    Only these two messages are dropped; any other warning or output of the
    same imports is passed on unchanged.
    """
    buffer = io.StringIO()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=MMCV_LITE_WARNING,
                                category=UserWarning)
        with contextlib.redirect_stdout(buffer):
            try:
                import mmcv.cnn.bricks.transformer  # noqa: F401
                import mmseg.datasets  # noqa: F401
                import mmseg.models  # noqa: F401
            finally:
                for line in buffer.getvalue().splitlines(keepends=True):
                    if line.rstrip('\n') != ONEDL_LINE:
                        sys.stdout.write(line)
