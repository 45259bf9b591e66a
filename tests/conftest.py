import pytest

from mmselds.datasets import generate


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """16 + 4 generated 64x128 images in Cityscapes layout."""
    root = str(tmp_path_factory.mktemp('synthetic_cityscapes'))
    generate(root, num_train=16, num_val=4, size=(64, 128), seed=0)
    return root


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """8 + 4 generated images at the demo configs' 128x256 size."""
    root = str(tmp_path_factory.mktemp('synthetic_cityscapes_demo'))
    generate(root, num_train=8, num_val=4, size=(128, 256), seed=1)
    return root
