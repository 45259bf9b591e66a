from .setup_env import fix_mmseg_package_name

__all__ = ['fix_mmseg_package_name']
