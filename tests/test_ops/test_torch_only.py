"""The core ops import and run with torch alone."""
import os.path as osp
import subprocess
import sys

from tests.snippets import BLOCK_MM, MM_LOADED

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

SCRIPT = BLOCK_MM + r'''
import torch
import mmselds
from mmselds.ops import CellMask, MixedFeature, selective_conv2d
x = torch.randn(1, 2, 4, 4)
cells = CellMask(torch.tensor([[[[1., 0.], [0., 1.]]]]), 'sparse')
out = selective_conv2d(MixedFeature.from_dense(x, cells),
                       torch.randn(3, 2, 3, 3), dilation=2)
assert out.densify().shape == (1, 3, 4, 4)
''' + MM_LOADED


def test_ops_import_without_mm_packages():
    out = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'
