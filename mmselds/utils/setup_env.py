from importlib import metadata


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
