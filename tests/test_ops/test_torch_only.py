"""The core ops import and run with torch alone."""
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

SCRIPT = r'''
import sys

class Block:  # as if no mm* package were installed
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top in ('mmseg', 'mmcv', 'mmengine'):
            raise ModuleNotFoundError(f'No module named {top!r}', name=top)

sys.meta_path.insert(0, Block())
import torch
import mmselds
from mmselds.ops import CellMask, MixedFeature, selective_conv2d
x = torch.randn(1, 2, 4, 4)
cells = CellMask(torch.tensor([[[[1., 0.], [0., 1.]]]]), 'sparse')
out = selective_conv2d(MixedFeature.from_dense(x, cells),
                       torch.randn(3, 2, 3, 3), dilation=2)
assert out.densify().shape == (1, 3, 4, 4)
loaded = sorted(m for m in sys.modules
                if m.split('.')[0] in ('mmseg', 'mmcv', 'mmengine'))
assert not loaded, loaded
print('ok')
'''


def test_ops_import_without_mm_packages():
    out = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'
